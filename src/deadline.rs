//! Deadlines that cost nothing when the future is ready at once.
//!
//! `tokio::time::timeout` makes its timer (the runtime's handle, the deadline read from the
//! clock, the timer's state) before it first polls the future. A request's body that came
//! with its head, or an idle upstream connection that is ready, is done on that first poll,
//! and the timer was made for nothing. These poll the future once first, and make the timer
//! only when the future has to wait; what they return is `timeout`'s.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tokio::time::error::Elapsed;

/// `tokio::time::timeout(limit, future)`, without a timer when `future` is ready at once.
pub async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    match poll_once(future.as_mut()).await {
        Some(done) => Ok(done),
        None => tokio::time::timeout(limit, future).await,
    }
}

/// `tokio::time::timeout_at(deadline, future)`, without a timer when `future` is ready at
/// once (even past `deadline`, as `timeout_at` polls the future before its timer).
pub async fn until<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    match poll_once(future.as_mut()).await {
        Some(done) => Ok(done),
        None => tokio::time::timeout_at(deadline, future).await,
    }
}

/// One poll of `future`: its output, or `None` with the task's waker left registered.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_is_done_even_past_its_deadline() {
        let past = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(until(past, std::future::ready(7)).await.ok(), Some(7));
        assert_eq!(
            within(Duration::ZERO, std::future::ready(8)).await.ok(),
            Some(8)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_is_bounded_and_one_in_time_finishes() {
        let never = std::future::pending::<()>();
        let started = Instant::now();
        assert!(within(Duration::from_millis(50), never).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(3);
        });
        let got = until(Instant::now() + Duration::from_millis(50), rx).await;
        assert_eq!(got.ok().and_then(Result::ok), Some(3));
    }
}
