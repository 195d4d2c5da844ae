//! One clock for the whole enclave. Code that needs the time takes a
//! [`Clock`]; the engine's functions take the time itself as a parameter.
//! Tests pass a [`ManualClock`] and move it instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Wall-clock time in Unix seconds, and a monotonic reading for rates.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch (0 if the system clock is before it).
    fn unix(&self) -> i64;
    /// A monotonic reading (for rates and allowances; never goes back).
    fn monotonic(&self) -> Duration;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

fn start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

impl Clock for SystemClock {
    fn unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        start().elapsed()
    }
}

/// A clock that moves only when told to (tests). Wall and monotonic time
/// advance together.
#[derive(Debug, Default)]
pub struct ManualClock {
    unix: AtomicI64,
    mono_ms: AtomicI64,
}

impl ManualClock {
    pub fn at(unix: i64) -> ManualClock {
        ManualClock {
            unix: AtomicI64::new(unix),
            mono_ms: AtomicI64::new(0),
        }
    }
    /// Move both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.mono_ms.fetch_add(ms, Ordering::SeqCst);
        self.unix
            .fetch_add(ms.div_euclid(1000).max(0), Ordering::SeqCst);
    }
    /// Set the wall clock (the monotonic one is untouched: it never goes back).
    pub fn set_unix(&self, unix: i64) {
        self.unix.store(unix, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix(&self) -> i64 {
        self.unix.load(Ordering::SeqCst)
    }
    fn monotonic(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.mono_ms.load(Ordering::SeqCst)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.unix(), 1_000);
        c.advance(Duration::from_millis(2_500));
        assert_eq!(c.unix(), 1_002);
        assert_eq!(c.monotonic(), Duration::from_millis(2_500));
        c.set_unix(5);
        assert_eq!(c.unix(), 5);
        assert_eq!(c.monotonic(), Duration::from_millis(2_500));
        assert!(SystemClock.unix() > 1_700_000_000);
    }
}
