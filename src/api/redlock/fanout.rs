//! Sending one command to every server at once, and stopping as soon as
//! the answers decide the outcome.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

/// Polls `calls` concurrently (on the caller's task: no spawn, so they may
/// borrow), handing each output with its index to `on_answer` as it comes.
/// Returns the first `Some` that `on_answer` gives, dropping the calls still
/// in flight, or `None` once every call answered without a decision.
///
/// A handful of servers: each wake-up polls the calls still running, which
/// costs less than a `FuturesUnordered` at this size and needs no
/// dependency.
pub(crate) async fn gather<F, D>(
    calls: Vec<F>,
    mut on_answer: impl FnMut(usize, F::Output) -> Option<D>,
) -> Option<D>
where
    F: Future,
{
    let mut calls: Vec<Option<Pin<Box<F>>>> =
        calls.into_iter().map(|f| Some(Box::pin(f))).collect();
    poll_fn(|cx| {
        let mut running = false;
        for (i, slot) in calls.iter_mut().enumerate() {
            let Some(call) = slot.as_mut() else { continue };
            match call.as_mut().poll(cx) {
                Poll::Ready(output) => {
                    *slot = None;
                    if let Some(decision) = on_answer(i, output) {
                        return Poll::Ready(Some(decision));
                    }
                }
                Poll::Pending => running = true,
            }
        }
        if running {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::gather;
    use std::time::Duration;

    #[tokio::test]
    async fn stops_at_the_first_decision_and_drops_the_rest() {
        let calls: Vec<_> = [30u64, 1, 2, 10_000]
            .into_iter()
            .map(|ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            })
            .collect();
        let mut seen = Vec::new();
        let started = std::time::Instant::now();
        let decided = gather(calls, |i, ms| {
            seen.push((i, ms));
            (seen.len() == 3).then_some(seen.len())
        })
        .await;
        assert_eq!(decided, Some(3));
        assert_eq!(seen, [(1, 1), (2, 2), (0, 30)]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn none_when_every_call_answered_undecided() {
        let calls: Vec<_> = (0..4).map(|i| async move { i }).collect();
        let mut sum = 0;
        let decided: Option<()> = gather(calls, |_, i| {
            sum += i;
            None
        })
        .await;
        assert_eq!(decided, None);
        assert_eq!(sum, 6);
    }
}
