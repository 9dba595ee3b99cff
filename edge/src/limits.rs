//! Admission limits on the player port: a global cap on concurrent
//! connections, a per-source-IP cap, and a per-source-IP connection-rate
//! limit (token bucket). Pure bookkeeping over a clock the caller passes in,
//! so every rule is unit-tested without sockets or sleeps.
//!
//! The per-IP rules apply to the player's real address: behind a trusted
//! load balancer that is the PROXY protocol source, not the balancer, so the
//! caller admits per IP only after the PROXY header is read.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits as configured. Zero means "no limit" for each field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    /// Concurrent connections on this edge.
    pub max_connections: usize,
    /// Concurrent connections from one source IP.
    pub max_connections_per_ip: usize,
    /// New connections per second from one source IP (token refill rate).
    pub rate_per_ip: f64,
    /// Burst of new connections one IP may open at once (bucket size).
    pub rate_burst: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_ip: 64,
            rate_per_ip: 20.0,
            rate_burst: 40.0,
        }
    }
}

/// Why a connection was refused; `reason()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("edge is at its connection limit")]
    TooManyConnections,
    #[error("too many concurrent connections from this address")]
    TooManyFromIp,
    #[error("connecting too fast from this address")]
    RateLimited,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "max_connections",
            Refusal::TooManyFromIp => "max_connections_per_ip",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

#[derive(Debug)]
struct IpState {
    active: usize,
    tokens: f64,
    refilled_at: Instant,
}

/// Entries are swept once the table grows past this many source IPs.
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug)]
struct Inner {
    config: LimitsConfig,
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, IpState>>,
}

/// Shared admission state of one edge.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// Held for the life of an admitted connection (global slot).
#[derive(Debug)]
pub struct ConnectionPermit {
    inner: Arc<Inner>,
}

/// Held for the life of an admitted connection (per-IP slot).
#[derive(Debug)]
pub struct IpPermit {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                active: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> LimitsConfig {
        self.inner.config
    }

    /// Connections currently holding a global slot.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Take a global slot, at accept time.
    pub fn admit_connection(&self) -> Result<ConnectionPermit, Refusal> {
        let max = self.inner.config.max_connections;
        let prev = self.inner.active.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            self.inner.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections);
        }
        Ok(ConnectionPermit {
            inner: self.inner.clone(),
        })
    }

    /// Take a per-IP slot and a rate token for `ip` at time `now`.
    pub fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<IpPermit, Refusal> {
        let cfg = self.inner.config;
        let mut map = self
            .inner
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > SWEEP_ABOVE {
            sweep(&mut map, &cfg, now);
        }
        let state = map.entry(ip).or_insert(IpState {
            active: 0,
            tokens: cfg.rate_burst.max(1.0),
            refilled_at: now,
        });
        refill(state, &cfg, now);
        if cfg.max_connections_per_ip != 0 && state.active >= cfg.max_connections_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        if cfg.rate_per_ip > 0.0 {
            if state.tokens < 1.0 {
                return Err(Refusal::RateLimited);
            }
            state.tokens -= 1.0;
        }
        state.active += 1;
        Ok(IpPermit {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Source IPs currently tracked (for tests and metrics).
    pub fn tracked_ips(&self) -> usize {
        self.inner
            .per_ip
            .lock()
            .map(|m| m.len())
            .unwrap_or_default()
    }
}

fn refill(state: &mut IpState, cfg: &LimitsConfig, now: Instant) {
    if cfg.rate_per_ip <= 0.0 {
        return;
    }
    let elapsed = now
        .saturating_duration_since(state.refilled_at)
        .as_secs_f64();
    state.tokens = (state.tokens + elapsed * cfg.rate_per_ip).min(cfg.rate_burst.max(1.0));
    state.refilled_at = now;
}

/// Forget IPs with no open connection and a full bucket: they are
/// indistinguishable from an IP never seen.
fn sweep(map: &mut HashMap<IpAddr, IpState>, cfg: &LimitsConfig, now: Instant) {
    map.retain(|_, s| {
        refill(s, cfg, now);
        s.active > 0 || (cfg.rate_per_ip > 0.0 && s.tokens < cfg.rate_burst.max(1.0))
    });
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = map.get_mut(&self.ip) {
            s.active = s.active.saturating_sub(1);
        }
    }
}

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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn cfg(max: usize, per_ip: usize, rate: f64, burst: f64) -> LimitsConfig {
        LimitsConfig {
            max_connections: max,
            max_connections_per_ip: per_ip,
            rate_per_ip: rate,
            rate_burst: burst,
        }
    }

    #[test]
    fn global_cap_refuses_past_the_limit_and_frees_on_drop() {
        let a = Admission::new(cfg(2, 0, 0.0, 0.0));
        let p1 = a.admit_connection().unwrap();
        let _p2 = a.admit_connection().unwrap();
        assert_eq!(
            a.admit_connection().unwrap_err(),
            Refusal::TooManyConnections
        );
        assert_eq!(a.active(), 2);
        drop(p1);
        assert!(a.admit_connection().is_ok());
    }

    #[test]
    fn per_ip_cap_counts_each_address_separately() {
        let a = Admission::new(cfg(0, 2, 0.0, 0.0));
        let now = Instant::now();
        let first = a.admit_ip(ip(1), now).unwrap();
        let _second = a.admit_ip(ip(1), now).unwrap();
        assert_eq!(a.admit_ip(ip(1), now).unwrap_err(), Refusal::TooManyFromIp);
        assert!(
            a.admit_ip(ip(2), now).is_ok(),
            "another address is unaffected"
        );
        drop(first);
        assert!(a.admit_ip(ip(1), now).is_ok());
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills_over_time() {
        let a = Admission::new(cfg(0, 0, 2.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            a.admit_ip(ip(1), t0).unwrap();
        }
        assert_eq!(a.admit_ip(ip(1), t0).unwrap_err(), Refusal::RateLimited);
        assert!(a.admit_ip(ip(2), t0).is_ok());
        // Two tokens a second: after half a second, exactly one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(a.admit_ip(ip(1), t1).is_ok());
        assert_eq!(a.admit_ip(ip(1), t1).unwrap_err(), Refusal::RateLimited);
        // The bucket never holds more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            a.admit_ip(ip(1), t2).unwrap();
        }
        assert_eq!(a.admit_ip(ip(1), t2).unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn idle_addresses_are_forgotten_so_memory_stays_bounded() {
        let a = Admission::new(cfg(0, 0, 10.0, 10.0));
        let t0 = Instant::now();
        for i in 0..(SWEEP_ABOVE as u32 + 10) {
            let addr = IpAddr::from(i.to_be_bytes());
            drop(a.admit_ip(addr, t0).unwrap());
        }
        let later = t0 + Duration::from_secs(5);
        drop(a.admit_ip(ip(9), later).unwrap());
        assert!(a.tracked_ips() <= 2, "tracked {}", a.tracked_ips());
    }

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
