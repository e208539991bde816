//! The watcher's reads of the disk: on the blocking pool, one at a time, each waited on for at
//! most a deadline.
//!
//! The runtime has one worker by default, so a read never runs on it: a slow or hung one (a
//! network or FUSE secrets mount that stopped answering, where even `open` blocks in the
//! kernel) stalls only the thread it runs on. The watcher gives up waiting after the
//! deadline, so SIGHUP and the next polls are still answered; and while a read hangs, no
//! other starts, so a mount that never answers holds one thread, not one more a second.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the watcher waits for one read of its files: a local or tmpfs file (a mounted
/// Secret) takes well under a millisecond, a healthy network mount a few.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Stalled {
    /// It did not finish within the deadline; it goes on in the background.
    #[error("reading the watched files did not finish within {} s (a hung mount?)", .0.as_secs())]
    TimedOut(Duration),
    /// An earlier read that did not finish in time still has not.
    #[error("a read of the watched files begun {} s ago has not finished (a hung mount?)", .0.as_secs())]
    Busy(Duration),
    /// It ended without an answer: the runtime is stopping.
    #[error("reading the watched files stopped before it finished")]
    Stopped,
}

/// Runs the watcher's reads, one at a time.
pub struct Disk {
    deadline: Duration,
    /// The last read that was given up on, and when it began.
    last: Option<(JoinHandle<()>, Instant)>,
}

impl Disk {
    /// A `Disk` that waits at most `deadline` for each read.
    pub fn new(deadline: Duration) -> Disk {
        Disk {
            deadline,
            last: None,
        }
    }

    /// `job`'s answer, if the last read has finished and this one finishes within the
    /// deadline.
    pub async fn run<T: Send + 'static>(
        &mut self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stalled> {
        if let Some((last, began)) = &self.last {
            if !last.is_finished() {
                return Err(Stalled::Busy(began.elapsed()));
            }
            self.last = None;
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let began = Instant::now();
        let read = tokio::task::spawn_blocking(move || {
            // The watcher may have given up on this answer: then nobody wants it.
            let _ = answer.send(job());
        });
        match tokio::time::timeout(self.deadline, answered).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(Stalled::Stopped),
            Err(_) => {
                // Kept only now: an answered read may not have returned its thread yet, and
                // must not make the next read look stalled.
                self.last = Some((read, began));
                Err(Stalled::TimedOut(self.deadline))
            }
        }
    }

    /// Waits until the last read has finished, however long it takes.
    #[cfg(test)]
    async fn settle(&mut self) {
        if let Some((last, _)) = self.last.take() {
            let _ = last.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_hung_read_is_given_up_on_and_no_second_one_starts_beside_it() {
        let mut disk = Disk::new(Duration::from_millis(50));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hung = disk.run(move || held.recv().is_ok()).await;
        assert!(matches!(hung, Err(Stalled::TimedOut(_))), "{hung:?}");

        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let beside = disk.run(move || flag.store(true, Ordering::SeqCst)).await;
        assert!(matches!(beside, Err(Stalled::Busy(_))), "{beside:?}");
        assert!(!started.load(Ordering::SeqCst), "a second read started");

        release.send(()).unwrap();
        disk.settle().await;
        assert_eq!(disk.run(|| 7).await.unwrap(), 7, "reads resume");
    }

    #[tokio::test]
    async fn a_read_within_the_deadline_gives_its_answer() {
        let mut disk = Disk::new(DEADLINE);
        assert_eq!(disk.run(|| "read").await.unwrap(), "read");
        assert_eq!(disk.run(|| "again").await.unwrap(), "again");
    }
}
