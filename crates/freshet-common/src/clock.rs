//! Time, injectable: the engine asks a [`Clock`] for the time and for waiting, so that tests can
//! move time forward by hand ([`ManualClock`]) instead of sleeping.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now_ms(&self) -> i64;

    /// Resolves once the clock reads `at_ms` or later.
    fn sleep_until(&self, at_ms: i64) -> Sleep;
}

/// The shared form in which the engine holds its clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn sleep_until(&self, at_ms: i64) -> Sleep {
        let wait = at_ms.saturating_sub(self.now_ms()).max(0);
        Box::pin(tokio::time::sleep(Duration::from_millis(wait as u64)))
    }
}

/// A clock that moves only when told to, for tests: [`ManualClock::advance`] wakes every
/// [`Clock::sleep_until`] whose time has come.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<i64>>,
    changed: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        let (changed, _) = watch::channel(start_ms);
        Self {
            now: Arc::new(Mutex::new(start_ms)),
            changed,
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now = now.saturating_add(by);
        self.changed.send_replace(*now);
    }

    /// Sets the clock to `at_ms` if that is later than its reading (it never goes back).
    pub fn set(&self, at_ms: i64) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if at_ms > *now {
            *now = at_ms;
            self.changed.send_replace(*now);
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep_until(&self, at_ms: i64) -> Sleep {
        let mut changed = self.changed.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, time can never come.
            if changed.wait_for(|now| *now >= at_ms).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(1_000);
        let sleep = clock.sleep_until(1_500);
        let waiter = tokio::spawn(sleep);
        clock.advance(Duration::from_millis(200));
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_millis(300));
        waiter.await.unwrap();
        assert_eq!(clock.now_ms(), 1_500);
        clock.set(1_000);
        assert_eq!(clock.now_ms(), 1_500, "the clock never goes back");
    }
}
