//! The text log line's fields, written without tracing-subscriber's colour machinery when
//! colours are off.
//!
//! tracing-subscriber's `DefaultFields` paints every field name and every `=` through
//! `nu_ansi_term`, even with an empty style: about a third of what a request's log line
//! costs. [`PlainFields`] writes the same bytes directly when the writer has no colours, and
//! hands everything else to `DefaultFields` as it is: coloured output, the message (whose
//! ANSI escapes `DefaultFields` neutralises), errors (with their sources), raw `r#` names
//! and the `log.` metadata of records from the `log` crate. Its output is byte for byte
//! `DefaultFields`'s; a test holds it to that.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

/// `DefaultFields`, minus painting with colours off (see the module's documentation).
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `DefaultVisitor` must write this field itself: only it escapes a message,
    /// lists an error's sources, strips `r#` and skips `log.` metadata.
    fn special(field: &Field) -> bool {
        let name = field.name();
        name == "message" || name.starts_with("r#") || name.starts_with("log.")
    }

    /// Lets `DefaultVisitor` write one field, at the place it would have had.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It writes the field (after a space if one came before), or skips `log.` metadata.
        self.is_empty &= field.name().starts_with("log.");
    }

    /// `name=value`, after a space if a field came before: `DefaultVisitor`'s bytes.
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.result = self.pad().and_then(|()| {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        });
    }

    fn pad(&mut self) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_str(field, value));
        } else {
            self.write(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.delegate(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if Self::special(field) {
            self.delegate(field, |visitor| visitor.record_debug(field, value));
        } else {
            self.write(field, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::fmt::MakeWriter;

    use super::PlainFields;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failed(io::Error);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream \u{1b}[1mfailed")
        }
    }

    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field timgate's lines carry, and the ones `DefaultFields` treats apart.
    fn events() {
        let span = tracing::info_span!("drain", id = 7, name = "a b");
        let _entered = span.enter();
        tracing::info!(
            caller = "svc\u{1b}[31m \"x\"",
            app = 1_400_000_000_u64,
            api = %"v4/im_open_login_svc/account_import",
            outcome = "ok",
            status = Some(200_u16),
            error_code = -1_i64,
            request_id = Option::<&str>::None,
            attempts = 1_u32,
            reached_tencent = true,
            latency_ms = 0.123_456_f64,
            error = Some("bad\nline \u{85}"),
            "request"
        );
        tracing::warn!(r#type = "x", count = ?vec![1, 2], "a message with {} and \u{1b}[0m", 3);
        let failed = Failed(io::Error::other("reset by peer"));
        tracing::error!(
            error = &failed as &dyn std::error::Error,
            after = 1,
            "failed"
        );
        tracing::error!(
            first = 1.0e21_f64,
            error = &failed as &dyn std::error::Error
        );
        tracing::info!(log.target = "skipped", after = f64::NAN);
        tracing::debug!(alone = "no message");
        tracing::info!(message = "explicit", x = 2.0_f64, y = ?'c');
    }

    fn captured(plain: bool, ansi: bool) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(buffer.clone())
            .without_time()
            .with_max_level(Level::TRACE);
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn plain_fields_write_what_default_fields_write() {
        for ansi in [false, true] {
            let (plain, default) = (captured(true, ansi), captured(false, ansi));
            assert_eq!(plain.lines().count(), 7, "{plain}");
            assert_eq!(plain, default, "colours {ansi}");
        }
        // The text log line as users and tests read it, to show what was compared.
        let line = captured(true, false);
        assert!(line.contains(" INFO drain{id=7 name=\"a b\"}: timgate::logfmt::tests: request caller=\"svc\\u{1b}[31m \\\"x\\\"\" app=1400000000 api=v4/im_open_login_svc/account_import outcome=\"ok\" status=200 error_code=-1 attempts=1 reached_tencent=true latency_ms=0.123456 error=\"bad\\nline \\u{85}\"\n"), "{line}");
    }
}
