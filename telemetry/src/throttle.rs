//! Rate-limited logging of repeated events (refused connections, cut
//! handshakes): a flood must not flood the logs too. The metric counts every
//! event; the log line says how many it stands for.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Log a repeated event at most once per interval, with how many were
/// suppressed since, so a flood cannot flood the logs too.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    suppressed: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            suppressed: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// `Some(n)` when the caller should log now (`n` events were suppressed
    /// since the last line), `None` when it should stay quiet.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_speaks_once_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.check(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.check(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.check(t0 + Duration::from_secs(10)), Some(5));
    }
}
