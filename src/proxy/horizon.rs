//! The timer horizon: a timer that is always due within [`HORIZON`], so that
//! the timers a request sets (its total deadline, the first event's timeout,
//! the upstream's idle timeout, all seconds away) are never the runtime's
//! earliest.
//!
//! Why: Tokio's timer driver wakes the I/O driver (a `write(2)` to its
//! eventfd, and a spurious `epoll_wait` return later) whenever a new timer is
//! due before the time the driver last planned to wake up, even when the
//! driver is not parked but busy running that very request (tokio-rs/tokio
//! issue 5207, open; pull request 8383 proposes a fix). On an idle gateway
//! there is no pending timer at all, so the first two timers of every request
//! paid that: two `write(2)` on the path to the upstream, measured with
//! `perf trace`. The horizon costs one wake-up per [`HORIZON`] when idle.

use std::time::Duration;
use tokio::sync::watch;

/// How far ahead the horizon timer is always due. Shorter than every timer a
/// local request sets; Redis-backed limits' command timeout (milliseconds)
/// still comes first and still pays the wake-up.
pub const HORIZON: Duration = Duration::from_secs(1);

/// Keeps the horizon timer pending until `stop` turns true.
pub async fn keep(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HORIZON);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_horizon_timer_is_always_pending_until_stop() {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(keep(rx));
        // Hours of (paused, auto-advanced) idle time: the task keeps ticking.
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        assert!(!task.is_finished());
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_millis(10), task)
            .await
            .expect("the horizon stops with the gateway")
            .expect("no panic");
    }
}
