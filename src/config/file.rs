//! Reading the files a configuration comes from (the configuration itself, key files, token
//! files), at start, on reload and when the watcher looks for a change.
//!
//! Only a regular file is read, so nothing at a configured path can make a read wait or run
//! forever: a path that is not a regular file (a FIFO, a device, a folder, a socket) is not
//! opened; the open itself is non-blocking (`O_NONBLOCK`: a FIFO put there since the check
//! returns at once instead of waiting for a writer), and the open file is checked again
//! (`fstat`) before any byte is read. No read takes more than its cap plus one byte, even
//! from a file that grows while it is read; a file over its cap is refused, never cut.

use std::fs::{File, Metadata};
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The largest configuration file read. An app takes some 140 bytes (the committed example,
/// with its comments, is 1.5 KB), so this holds about 7,000: `timgate check` of such a file
/// (7,489 apps) took 0.4 s with a 37 MiB peak; of 1 MiB of comments, 9 MiB (a small file,
/// 6 MiB). A larger file is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The largest key or token file read: far above any real key (Tencent's are 64 hex
/// characters).
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// How much of which kind of file is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cap {
    bytes: u64,
    what: &'static str,
}

/// The configuration file's cap.
pub(crate) const CONFIG: Cap = Cap {
    bytes: MAX_CONFIG_BYTES,
    what: "a configuration file",
};

/// The emulator's seed file's cap: the configuration file's.
pub(crate) const SEED: Cap = Cap {
    bytes: MAX_CONFIG_BYTES,
    what: "an emulator seed file",
};

/// A key or token file's cap.
pub(crate) const KEY: Cap = Cap {
    bytes: MAX_KEY_FILE_BYTES,
    what: "a key or token file",
};

/// Why a file was not read. Never holds any of its contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Opening, inspecting or reading it failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Something other than a regular file is at the path.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// It holds more than its cap.
    #[error("{} is larger than {}, the most timgate reads of {}", path.display(), size(cap.bytes), cap.what)]
    TooLarge { path: PathBuf, cap: Cap },
}

/// The whole of `path`, a regular file of at most `cap` bytes.
pub(crate) fn read(path: &Path, cap: Cap) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open(path, cap)?;
    // The length fstat gave, and the one byte that tells whether the file grew past the cap.
    let room = usize::try_from(len).map_or(0, |len| len.saturating_add(1));
    let mut bytes = Vec::with_capacity(room);
    copy(file, path, cap, &mut bytes)?;
    Ok(bytes)
}

/// Feeds the whole of `path`, a regular file of at most `cap` bytes, to `hasher` a few KiB at
/// a time, and returns its length: the watcher sees a change anywhere in the file without
/// holding it.
pub(crate) fn hash(path: &Path, cap: Cap, hasher: &mut impl Hasher) -> Result<u64, ReadError> {
    let (file, _) = open(path, cap)?;
    copy(file, path, cap, &mut Hashing(hasher))
}

/// Opens `path` if it is a regular file of at most `cap` bytes, and its length then.
fn open(path: &Path, cap: Cap) -> Result<(File, u64), ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    // Checked before opening, because opening some devices acts (a watchdog starts, a tape
    // rewinds); and again on the open file, which is what is read.
    regular(path, &std::fs::metadata(path).map_err(io)?)?;
    let file = options().open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    regular(path, &meta)?;
    if meta.len() > cap.bytes {
        return Err(too_large(path, cap));
    }
    Ok((file, meta.len()))
}

#[cfg(unix)]
fn options() -> std::fs::OpenOptions {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    // NONBLOCK: a FIFO swapped in after the check opens at once (the fstat then refuses it)
    // instead of waiting for a writer; a regular file's reads ignore it. NOCTTY: a terminal
    // never becomes the process's own.
    let flags = (OFlags::NONBLOCK | OFlags::NOCTTY).bits();
    options
        .read(true)
        .custom_flags(i32::try_from(flags).unwrap_or(0));
    options
}

#[cfg(not(unix))]
fn options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    options
}

/// Refuses anything but a regular file, naming what it is.
fn regular(path: &Path, meta: &Metadata) -> Result<(), ReadError> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    Err(ReadError::NotRegular {
        path: path.to_owned(),
        kind: describe(kind),
    })
}

#[cfg(unix)]
fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a folder"
    } else {
        "something"
    }
}

#[cfg(not(unix))]
fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a folder"
    } else {
        "something"
    }
}

/// Copies `file` to `sink` and returns its length; a file that grew past `cap` since its
/// fstat is refused after `cap` + 1 bytes.
fn copy(file: File, path: &Path, cap: Cap, sink: &mut impl Write) -> Result<u64, ReadError> {
    match capped(file, cap.bytes, sink) {
        Ok(Some(len)) => Ok(len),
        Ok(None) => Err(too_large(path, cap)),
        Err(source) => Err(ReadError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Copies `reader` to `sink`, reading at most `cap` + 1 bytes: how many it copied, or `None`
/// if there were more than `cap`.
fn capped(reader: impl Read, cap: u64, sink: &mut impl Write) -> std::io::Result<Option<u64>> {
    let copied = std::io::copy(&mut reader.take(cap.saturating_add(1)), sink)?;
    Ok((copied <= cap).then_some(copied))
}

fn too_large(path: &Path, cap: Cap) -> ReadError {
    ReadError::TooLarge {
        path: path.to_owned(),
        cap,
    }
}

/// `bytes` in the largest binary unit that divides it: `1 MiB`, `64 KiB`, `1000 bytes`.
fn size(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".into(),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// A `Write` that hashes what it is given.
struct Hashing<'h, H>(&'h mut H);

impl<H: Hasher> Write for Hashing<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    /// A fresh folder for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "timgate-file-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SMALL: Cap = Cap {
        bytes: 10,
        what: "a test file",
    };

    #[test]
    fn a_regular_file_is_read_whole_up_to_its_cap() {
        let dir = Dir::new("regular");
        let path = dir.0.join("ten");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read(&path, SMALL).unwrap(), b"0123456789");
        std::fs::write(&path, "0123456789a").unwrap();
        let e = read(&path, SMALL).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} is larger than 10 bytes, the most timgate reads of a test file",
                path.display()
            )
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_without_waiting_for_a_writer() {
        let dir = Dir::new("fifo");
        let path = dir.0.join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // No writer ever comes: a blocking open would wait here forever.
        let e = read(&path, KEY).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );
        let mut hasher = DefaultHasher::new();
        let e = hash(&path, KEY, &mut hasher).unwrap_err();
        assert!(
            e.to_string().ends_with("is a FIFO, not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_swapped_in_after_the_check_opens_without_blocking() {
        let dir = Dir::new("swap");
        let path = dir.0.join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // What `open` does after a check that saw a regular file: the open returns at once.
        let file = options().open(&path).unwrap();
        let e = regular(&path, &file.metadata().unwrap()).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );
    }

    #[test]
    fn devices_and_folders_are_refused_naming_what_they_are() {
        let dir = Dir::new("kinds");
        let link = dir.0.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for (path, kind) in [
            (link.as_path(), "a character device"),
            (dir.0.as_path(), "a folder"),
        ] {
            let e = read(path, CONFIG).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{} is {kind}, not a regular file", path.display())
            );
        }
        let missing = dir.0.join("missing");
        assert!(matches!(
            read(&missing, CONFIG).unwrap_err(),
            ReadError::Io { .. }
        ));
    }

    #[test]
    fn a_reader_longer_than_its_length_said_is_cut_one_byte_past_the_cap() {
        // A file that grows between its fstat and its read: an endless reader.
        let mut sink = Vec::new();
        assert_eq!(
            capped(std::io::repeat(b'x'), 1000, &mut sink).unwrap(),
            None
        );
        assert_eq!(sink.len(), 1001);
        let mut sink = Vec::new();
        assert_eq!(capped(&b"exactly"[..], 7, &mut sink).unwrap(), Some(7));
        assert_eq!(sink, b"exactly");
    }

    #[test]
    fn the_hash_sees_a_change_anywhere_in_the_file() {
        let dir = Dir::new("hash");
        let path = dir.0.join("config.toml");
        let fingerprint = || {
            let mut hasher = DefaultHasher::new();
            hash(&path, CONFIG, &mut hasher).unwrap();
            hasher.finish()
        };
        let mut text = vec![b'#'; 300 * 1024];
        std::fs::write(&path, &text).unwrap();
        let before = fingerprint();
        assert_eq!(fingerprint(), before);
        text[290 * 1024] = b'!';
        std::fs::write(&path, &text).unwrap();
        assert_ne!(fingerprint(), before);
    }

    #[test]
    fn caps_read_in_binary_units() {
        assert_eq!(size(MAX_CONFIG_BYTES), "1 MiB");
        assert_eq!(size(MAX_KEY_FILE_BYTES), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
