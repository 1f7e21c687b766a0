//! The polling loop shared by everything that follows files: local mode's manifests, the serving
//! certificates and the extension's client CA. Polling, rather than inotify, also follows the
//! symlink swaps Kubernetes uses to update mounted Secrets and ConfigMaps.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `look` at once and then every `period` (at least 1 ms) until `stop` is cancelled; a slow
/// look delays the next one instead of bunching them up.
pub async fn every(period: Duration, stop: &CancellationToken, mut look: impl FnMut()) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => look(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn looks_at_once_then_every_period_until_stopped() {
        let stop = CancellationToken::new();
        let looks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = looks.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                every(Duration::from_secs(2), &stop, || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(4_100)).await;
        assert_eq!(looks.load(std::sync::atomic::Ordering::SeqCst), 3, "at 0, 2 and 4 s");
        stop.cancel();
        task.await.expect("joining the polling task");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(looks.load(std::sync::atomic::Ordering::SeqCst), 3, "no look after stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_period_does_not_panic() {
        let stop = CancellationToken::new();
        let mut looks = 0;
        let run = every(Duration::ZERO, &stop, || {
            looks += 1;
            if looks == 3 {
                stop.cancel();
            }
        });
        tokio::time::timeout(Duration::from_secs(1), run).await.unwrap_or_else(|_| panic!("never stopped"));
        assert_eq!(looks, 3);
    }
}
