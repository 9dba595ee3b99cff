//! Admission limits on the player port: a global cap on concurrent
//! connections, a per-source-address cap, and a per-source-address
//! connection-rate limit (token bucket). Pure bookkeeping over a clock the
//! caller passes in, so every rule is unit-tested without sockets or sleeps.
//!
//! The per-address rules apply to the player's real address, before a single
//! byte is read: at accept for a direct peer, right after the PROXY header
//! for a trusted load balancer (whose own address is not the player's).
//! Addresses are grouped the way they are handed out: an IPv4 address
//! counts alone (`/32`), an IPv6 one by its `/64`, since one subscriber gets
//! a whole `/64` ([`AddrKey`]).
//!
//! Every admission is O(1) amortized whatever the number of tracked
//! addresses: an address whose last connection ends is queued with the time
//! its bucket is sure to be full again, and each admission forgets at most a
//! few such addresses from the front of that queue. Nothing ever scans the
//! table.
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits as configured. Zero means "no limit" for each count and rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    /// Concurrent connections on this edge.
    pub max_connections: usize,
    /// Concurrent connections from one source address group.
    pub max_connections_per_ip: usize,
    /// Logins from one source address group held at once while their server wakes (a
    /// kept-alive hold lasts up to the whole wake: a share of `max_connections_per_ip`).
    pub max_held_logins_per_ip: usize,
    /// New connections per second from one source address group (token refill rate).
    pub rate_per_ip: f64,
    /// Burst of new connections one address group may open at once (bucket size).
    pub rate_burst: f64,
    /// IPv4 addresses sharing this many leading bits count as one source.
    pub ipv4_prefix: u8,
    /// IPv6 addresses sharing this many leading bits count as one source.
    pub ipv6_prefix: u8,
}

pub const DEFAULT_IPV4_PREFIX: u8 = 32;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_ip: 64,
            max_held_logins_per_ip: 8,
            rate_per_ip: 20.0,
            rate_burst: 40.0,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl LimitsConfig {
    /// No per-address rule at all: nothing needs tracking.
    fn per_address_off(&self) -> bool {
        self.max_connections_per_ip == 0 && self.rate_per_ip <= 0.0
    }

    fn bucket_size(&self) -> f64 {
        self.rate_burst.max(1.0)
    }

    /// Longest an idle address takes to refill a bucket from empty: after
    /// that it is indistinguishable from one never seen.
    fn full_refill(&self) -> Duration {
        if self.rate_per_ip <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(self.bucket_size() / self.rate_per_ip)
            .unwrap_or(Duration::from_secs(3600))
    }
}

/// The source a per-address limit counts against: the address with every bit
/// past the configured prefix cleared. IPv4-mapped IPv6 addresses (what a
/// dual-stack listener reports for IPv4 players) count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn new(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & prefix_mask_u32(ipv4_prefix);
                Self(IpAddr::V4(Ipv4Addr::from(bits)))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & prefix_mask_u128(ipv6_prefix);
                Self(IpAddr::V6(Ipv6Addr::from(bits)))
            }
        }
    }

    /// The first address of the group (for logs).
    pub fn network(&self) -> IpAddr {
        self.0
    }
}

fn prefix_mask_u32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

fn prefix_mask_u128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
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
struct AddrState {
    active: usize,
    tokens: f64,
    refilled_at: Instant,
    /// Which idle-queue entry may forget this address (see [`Table::idle`]).
    idle_ticket: u64,
}

/// An address whose last connection ended: forgettable from `at` on, unless
/// it connected again since (its ticket moved on).
#[derive(Debug)]
struct Idle {
    key: AddrKey,
    ticket: u64,
    at: Instant,
}

/// Idle-queue entries looked at per admission: more than one, so the queue
/// shrinks faster than releases can grow it.
const FORGET_PER_ADMISSION: usize = 4;

#[derive(Debug, Default)]
struct Table {
    addrs: HashMap<AddrKey, AddrState>,
    /// In order of `at` (every entry waits the same `full_refill`).
    idle: VecDeque<Idle>,
    next_ticket: u64,
}

impl Table {
    /// Forget up to [`FORGET_PER_ADMISSION`] addresses that are idle with a
    /// full bucket at `now`.
    fn forget_idle(&mut self, now: Instant) {
        for _ in 0..FORGET_PER_ADMISSION {
            match self.idle.front() {
                Some(i) if i.at <= now => {}
                _ => return,
            }
            let Some(i) = self.idle.pop_front() else {
                return;
            };
            if self
                .addrs
                .get(&i.key)
                .is_some_and(|s| s.active == 0 && s.idle_ticket == i.ticket)
            {
                self.addrs.remove(&i.key);
            }
        }
    }

    fn release(&mut self, key: AddrKey, cfg: &LimitsConfig, now: Instant) {
        let Some(s) = self.addrs.get_mut(&key) else {
            return;
        };
        s.active = s.active.saturating_sub(1);
        if s.active > 0 {
            return;
        }
        if cfg.rate_per_ip <= 0.0 {
            // No bucket to remember: an idle address is a new one.
            self.addrs.remove(&key);
            return;
        }
        self.next_ticket += 1;
        s.idle_ticket = self.next_ticket;
        // Whatever is left in the bucket, it is full again by then.
        let from = now.max(s.refilled_at);
        self.idle.push_back(Idle {
            key,
            ticket: self.next_ticket,
            at: from + cfg.full_refill(),
        });
    }
}

#[derive(Debug)]
struct Inner {
    config: LimitsConfig,
    active: AtomicUsize,
    table: Mutex<Table>,
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

/// Held for the life of an admitted connection (per-address slot).
#[derive(Debug)]
pub struct IpPermit {
    inner: Arc<Inner>,
    /// `None` when no per-address rule is configured.
    key: Option<AddrKey>,
}

impl Admission {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                active: AtomicUsize::new(0),
                table: Mutex::new(Table::default()),
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

    /// Take a per-address slot and a rate token for `ip`'s group at time `now`.
    pub fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<IpPermit, Refusal> {
        let cfg = self.inner.config;
        if cfg.per_address_off() {
            return Ok(IpPermit {
                inner: self.inner.clone(),
                key: None,
            });
        }
        let key = AddrKey::new(ip, cfg.ipv4_prefix, cfg.ipv6_prefix);
        let mut table = self.inner.table();
        table.forget_idle(now);
        let state = table.addrs.entry(key).or_insert(AddrState {
            active: 0,
            tokens: cfg.bucket_size(),
            refilled_at: now,
            idle_ticket: 0,
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
            key: Some(key),
        })
    }

    /// Source address groups currently tracked (for tests and metrics).
    pub fn tracked_ips(&self) -> usize {
        self.inner.table().addrs.len()
    }
}

fn refill(state: &mut AddrState, cfg: &LimitsConfig, now: Instant) {
    if cfg.rate_per_ip <= 0.0 {
        return;
    }
    let elapsed = now
        .saturating_duration_since(state.refilled_at)
        .as_secs_f64();
    state.tokens = (state.tokens + elapsed * cfg.rate_per_ip).min(cfg.bucket_size());
    state.refilled_at = now;
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let cfg = self.inner.config;
            self.inner.table().release(key, &cfg, Instant::now());
        }
    }
}

pub use automc_telemetry::LogThrottle;

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
            ..LimitsConfig::default()
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
    fn idle_addresses_are_forgotten_a_few_per_admission_so_memory_stays_bounded() {
        let a = Admission::new(cfg(0, 0, 10.0, 10.0));
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            drop(a.admit_ip(IpAddr::from(i.to_be_bytes()), t0).unwrap());
        }
        assert_eq!(a.tracked_ips(), 10_000);
        // Once their buckets are full again, each admission forgets a few:
        // no admission ever walks the whole table.
        let later = t0 + Duration::from_secs(5);
        drop(a.admit_ip(ip(9), later).unwrap());
        assert!(a.tracked_ips() > 10_000 - 2 * FORGET_PER_ADMISSION);
        for i in 0..(10_000 / FORGET_PER_ADMISSION as u64) {
            // One connection per token refill (10 a second).
            let t = later + Duration::from_millis(100 * i);
            drop(a.admit_ip(ip(9), t).unwrap());
        }
        assert!(a.tracked_ips() <= 2, "tracked {}", a.tracked_ips());
    }

    #[test]
    fn an_address_is_not_forgotten_while_it_has_a_connection_or_an_empty_bucket() {
        let a = Admission::new(cfg(0, 1, 1.0, 1.0));
        let t0 = Instant::now();
        let held = a.admit_ip(ip(1), t0).unwrap();
        drop(a.admit_ip(ip(2), t0).unwrap());
        let later = t0 + Duration::from_secs(3600);
        for i in 10..20 {
            drop(a.admit_ip(ip(i), later).unwrap());
        }
        // ip(1) still holds its one connection: the cap applies.
        assert_eq!(
            a.admit_ip(ip(1), later).unwrap_err(),
            Refusal::TooManyFromIp
        );
        drop(held);
        // ip(2) just spent its only token and connects again at once: refused,
        // so the rate limit is not escaped by being forgotten.
        let t1 = Instant::now();
        let a = Admission::new(cfg(0, 0, 1.0, 1.0));
        drop(a.admit_ip(ip(2), t1).unwrap());
        for i in 10..20 {
            drop(a.admit_ip(ip(i), t1).unwrap());
        }
        assert_eq!(a.admit_ip(ip(2), t1).unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_ipv4_by_address() {
        let key = |s: &str| AddrKey::new(s.parse().unwrap(), 32, 64);
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(
            key("2001:db8:1:2::1").network().to_string(),
            "2001:db8:1:2::"
        );
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        // A dual-stack listener reports IPv4 players as mapped addresses.
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        // Prefix lengths are configurable, and out-of-range ones clamp.
        let wide = |s: &str| AddrKey::new(s.parse().unwrap(), 24, 48);
        assert_eq!(wide("192.0.2.1"), wide("192.0.2.200"));
        assert_eq!(wide("2001:db8:1:2::1"), wide("2001:db8:1:ffff::1"));
        assert_ne!(wide("2001:db8:1:2::1"), wide("2001:db8:2:2::1"));
        let all = |s: &str| AddrKey::new(s.parse().unwrap(), 0, 200);
        assert_eq!(all("10.0.0.1"), all("192.0.2.1"));
        assert_ne!(all("2001:db8::1"), all("2001:db8::2"));
    }

    #[test]
    fn one_ipv6_64_shares_one_cap() {
        let a = Admission::new(cfg(0, 2, 0.0, 0.0));
        let now = Instant::now();
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _p1 = a.admit_ip(v6("2001:db8:0:1::1"), now).unwrap();
        let _p2 = a.admit_ip(v6("2001:db8:0:1::2"), now).unwrap();
        assert_eq!(
            a.admit_ip(v6("2001:db8:0:1:dead:beef::3"), now)
                .unwrap_err(),
            Refusal::TooManyFromIp
        );
        assert!(a.admit_ip(v6("2001:db8:0:2::1"), now).is_ok());
    }

    #[test]
    fn with_no_per_address_rule_nothing_is_tracked() {
        let a = Admission::new(cfg(0, 0, 0.0, 0.0));
        let _p = a.admit_ip(ip(1), Instant::now()).unwrap();
        assert_eq!(a.tracked_ips(), 0);
    }
}
