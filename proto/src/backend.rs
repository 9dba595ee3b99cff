//! A route's backends as both sides see them: the full backend set (the
//! `servers.address` first, then the `server_backends` rows), the address
//! rules syncd validates rows with, and the wildcard capture an edge expands
//! into an address (`*.mc.example.com` + `{1}.internal:25565`).
use std::net::IpAddr;

use crate::v1::{Backend, BackendStrategy, Route};

/// Longest backend address accepted (a DNS name plus `:port`).
pub const MAX_ADDRESS_LEN: usize = 261;
/// The placeholder an address may hold for the label a wildcard captured.
pub const CAPTURE: &str = "{1}";

/// Why a backend address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    #[error("address has no `:port`")]
    NoPort,
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("host {0:?} is not a DNS name, an IPv4 address or a [bracketed] IPv6 address")]
    BadHost(String),
}

/// Check `host:port` (host: a DNS name, IPv4, or `[IPv6]`; `{1}` may stand
/// for one label of a DNS name).
pub fn validate_address(address: &str) -> Result<(), AddressError> {
    if address.is_empty() {
        return Err(AddressError::Empty);
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    let (host, port) = address.rsplit_once(':').ok_or(AddressError::NoPort)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('+') => {}
        _ => return Err(AddressError::BadPort(port.to_owned())),
    }
    let bad = || AddressError::BadHost(host.to_owned());
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or_else(bad)?;
        return match v6.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => Ok(()),
            _ => Err(bad()),
        };
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Ok(()),
        // Unbracketed, its colons are ambiguous with the port's.
        Ok(IpAddr::V6(_)) => return Err(bad()),
        Err(_) => {}
    }
    // A DNS name: every label 1..=63 of [a-z0-9-_], `{1}` standing for one.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(bad());
    }
    for label in host.split('.') {
        if label != CAPTURE && !is_dns_label(label, true) {
            return Err(bad());
        }
    }
    Ok(())
}

/// One DNS label: 1..=63 letters, digits and hyphens, not starting or ending
/// with a hyphen (`_` also accepted where `underscore` is set: service
/// names in operators' own records).
pub fn is_dns_label(label: &str, underscore: bool) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || (underscore && c == b'_'))
}

/// Whether an address holds the wildcard capture.
pub fn has_capture(address: &str) -> bool {
    address.contains(CAPTURE)
}

/// What a `*.suffix` pattern captured from `hostname` (already normalised):
/// the part before `.suffix`. `None` for another kind of pattern or a
/// hostname it does not match.
pub fn captured<'a>(pattern: &str, hostname: &'a str) -> Option<&'a str> {
    let suffix = pattern.strip_prefix("*.")?;
    let head = hostname.strip_suffix(suffix)?.strip_suffix('.')?;
    (!head.is_empty()).then_some(head)
}

/// The address to dial: `address` with `{1}` replaced by the captured
/// label. `None` when the address needs a capture and there is none, or the
/// capture is not one DNS label (never a path, a port or several labels).
pub fn expand_address(address: &str, capture: Option<&str>) -> Option<String> {
    if !has_capture(address) {
        return Some(address.to_owned());
    }
    let label = capture?;
    if !is_dns_label(label, false) {
        return None;
    }
    Some(address.replace(CAPTURE, label))
}

impl BackendStrategy {
    /// The name operators write in `server_options.strategy`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified | Self::Failover => "failover",
            Self::RoundRobin => "round-robin",
            Self::Random => "random",
            Self::LeastPlayers => "least-players",
        }
    }

    /// Read `server_options.strategy` (case-insensitive, `_` for `-`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "failover" => Some(Self::Failover),
            "round-robin" | "roundrobin" => Some(Self::RoundRobin),
            "random" => Some(Self::Random),
            "least-players" => Some(Self::LeastPlayers),
            _ => None,
        }
    }
}

impl Route {
    /// [`Route::backend_set`] with `{1}` expanded from `capture`; a backend
    /// whose address cannot be expanded (no capture, or not one label) is
    /// left out.
    pub fn dial_set(&self, capture: Option<&str>) -> Vec<Backend> {
        self.backend_set()
            .into_iter()
            .filter_map(|b| {
                let address = expand_address(&b.address, capture)?;
                Some(Backend { address, ..b })
            })
            .collect()
    }

    /// Every backend in failover order: `address` (priority 0, weight 1)
    /// first among equals, then the extra rows, stably sorted by priority.
    pub fn backend_set(&self) -> Vec<Backend> {
        let mut all = Vec::with_capacity(1 + self.backends.len());
        all.push(Backend {
            address: self.address.clone(),
            weight: 1,
            priority: 0,
        });
        all.extend(self.backends.iter().cloned());
        all.sort_by_key(|b| b.priority);
        all
    }

    /// Whether edges need fleet player counts for this route: it balances on
    /// them (least-players) or limits players (max_players). syncd sends
    /// counts for these routes only.
    pub fn uses_counts(&self) -> bool {
        self.strategy() == BackendStrategy::LeastPlayers
            || self
                .options
                .as_ref()
                .is_some_and(|o| o.max_players.is_some())
    }

    /// The strategy the route asks for (failover when unset).
    pub fn strategy(&self) -> BackendStrategy {
        match self.options.as_ref().map(|o| o.strategy()) {
            None | Some(BackendStrategy::Unspecified) => BackendStrategy::Failover,
            Some(s) => s,
        }
    }
}

/// What an edge knows of one backend when it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendState {
    /// A dial failed recently: try it only after every other.
    pub backed_off: bool,
    /// Players on it (fleet-wide when known, else this edge's).
    pub players: u32,
}

/// The order in which to try `backends` (failover order, as
/// [`Route::backend_set`] gives them; `state` alike): the strategy's pick
/// first, then every other backend not backed off in failover order, then
/// the backed-off ones in failover order (a backoff is a preference, never a
/// ban: a route whose every backend failed is still dialled).
///
/// The pick comes from the candidates: backends not backed off (all of them
/// when each is), only weighted ones when there are any, of the best
/// priority among those. `turn` drives round-robin (the edge counts logins
/// per server), `random` the random strategy.
pub fn order(
    strategy: BackendStrategy,
    backends: &[Backend],
    state: &[BackendState],
    turn: u64,
    random: u64,
) -> Vec<usize> {
    let n = backends.len().min(state.len());
    if n == 0 {
        return Vec::new();
    }
    let healthy: Vec<usize> = (0..n).filter(|&i| !state[i].backed_off).collect();
    let pool: Vec<usize> = if healthy.is_empty() {
        (0..n).collect()
    } else {
        healthy.clone()
    };
    let weighted: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|&i| backends[i].weight > 0)
        .collect();
    let pool = if weighted.is_empty() { pool } else { weighted };
    let best = pool
        .iter()
        .map(|&i| backends[i].priority)
        .min()
        .unwrap_or(0);
    let candidates: Vec<usize> = pool
        .into_iter()
        .filter(|&i| backends[i].priority == best)
        .collect();
    let weight = |i: usize| u64::from(backends[i].weight.max(1));
    let by_weight = |k: u64| {
        let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
        let mut k = k % total.max(1);
        for &i in &candidates {
            if k < weight(i) {
                return i;
            }
            k -= weight(i);
        }
        candidates[0]
    };
    let first = match strategy {
        BackendStrategy::Unspecified | BackendStrategy::Failover => candidates[0],
        BackendStrategy::RoundRobin => by_weight(turn),
        BackendStrategy::Random => by_weight(random),
        BackendStrategy::LeastPlayers => {
            // Fewest players per unit of weight; ties keep failover order.
            let mut best = candidates[0];
            for &i in &candidates[1..] {
                let (pi, pb) = (u64::from(state[i].players), u64::from(state[best].players));
                if pi * weight(best) < pb * weight(i) {
                    best = i;
                }
            }
            best
        }
    };
    let mut out = Vec::with_capacity(n);
    out.push(first);
    out.extend((0..n).filter(|&i| i != first && !state[i].backed_off));
    out.extend((0..n).filter(|&i| i != first && state[i].backed_off));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(address: &str, weight: u32, priority: i32) -> Backend {
        Backend {
            address: address.into(),
            weight,
            priority,
        }
    }

    fn up(players: u32) -> BackendState {
        BackendState {
            backed_off: false,
            players,
        }
    }

    const DOWN: BackendState = BackendState {
        backed_off: true,
        players: 0,
    };

    #[test]
    fn failover_takes_the_first_healthy_backend_and_keeps_the_rest_in_order() {
        let set = [b("a", 1, 0), b("b", 1, 0), b("c", 1, 5)];
        let f = BackendStrategy::Failover;
        assert_eq!(order(f, &set, &[up(0); 3], 0, 0), [0, 1, 2]);
        assert_eq!(order(f, &set, &[DOWN, up(0), up(0)], 0, 0), [1, 2, 0]);
        assert_eq!(order(f, &set, &[DOWN, DOWN, up(0)], 0, 0), [2, 0, 1]);
        // Every backend backed off: all are still tried, in order.
        assert_eq!(order(f, &set, &[DOWN; 3], 0, 0), [0, 1, 2]);
        assert_eq!(order(f, &[], &[], 0, 0), Vec::<usize>::new());
    }

    #[test]
    fn round_robin_cycles_the_best_priority_by_weight() {
        let set = [b("a", 1, 0), b("b", 2, 0), b("standby", 1, 9)];
        let rr = BackendStrategy::RoundRobin;
        let firsts: Vec<usize> = (0..6)
            .map(|t| order(rr, &set, &[up(0); 3], t, 0)[0])
            .collect();
        assert_eq!(firsts, [0, 1, 1, 0, 1, 1]);
        // The standby only when both are down.
        assert_eq!(order(rr, &set, &[DOWN, DOWN, up(0)], 3, 0)[0], 2);
    }

    #[test]
    fn weight_zero_is_a_last_resort() {
        let set = [b("drained", 0, 0), b("live", 1, 0)];
        for s in [BackendStrategy::Failover, BackendStrategy::RoundRobin] {
            assert_eq!(order(s, &set, &[up(0); 2], 0, 0), [1, 0], "{s:?}");
            assert_eq!(order(s, &set, &[up(0), DOWN], 0, 0), [0, 1], "{s:?}");
        }
    }

    #[test]
    fn random_follows_the_weights() {
        let set = [b("a", 1, 0), b("b", 3, 0)];
        let mut seen = [0usize; 2];
        for r in 0..400 {
            seen[order(BackendStrategy::Random, &set, &[up(0); 2], 0, r)[0]] += 1;
        }
        assert_eq!(seen, [100, 300]);
    }

    #[test]
    fn least_players_picks_the_emptiest_per_weight() {
        let set = [b("a", 1, 0), b("b", 1, 0), b("c", 2, 0)];
        let lp = BackendStrategy::LeastPlayers;
        assert_eq!(order(lp, &set, &[up(3), up(1), up(4)], 0, 0)[0], 1);
        // 4 players on weight 2 is 2 per unit: fewer than 3.
        assert_eq!(order(lp, &set, &[up(3), up(3), up(4)], 0, 0)[0], 2);
        // Ties keep failover order; a backed-off one is skipped.
        assert_eq!(order(lp, &set, &[up(1), up(1), up(2)], 0, 0)[0], 0);
        assert_eq!(order(lp, &set, &[DOWN, up(5), up(0)], 0, 0), [2, 1, 0]);
    }

    #[test]
    fn addresses_are_host_and_port() {
        let good = [
            "10.0.0.1:25565",
            "mc.internal:25565",
            "mc.internal.:1",
            "[2001:db8::1]:25565",
            "{1}.mc.svc.cluster.local:25565",
            "a_b.internal:25565",
        ];
        for a in good {
            assert_eq!(validate_address(a), Ok(()), "{a}");
        }
        let bad = [
            ("", AddressError::Empty),
            ("10.0.0.1", AddressError::NoPort),
            ("10.0.0.1:0", AddressError::BadPort("0".into())),
            ("10.0.0.1:70000", AddressError::BadPort("70000".into())),
            ("10.0.0.1:+1", AddressError::BadPort("+1".into())),
            ("mc/evil:25565", AddressError::BadHost("mc/evil".into())),
            (
                "2001:db8::1:25565",
                AddressError::BadHost("2001:db8::1".into()),
            ),
            (
                "[10.0.0.1]:25565",
                AddressError::BadHost("[10.0.0.1]".into()),
            ),
            ("-a.example:1", AddressError::BadHost("-a.example".into())),
            ("a..b:1", AddressError::BadHost("a..b".into())),
            (":25565", AddressError::BadHost(String::new())),
            ("{2}.x:1", AddressError::BadHost("{2}.x".into())),
        ];
        for (a, want) in bad {
            assert_eq!(validate_address(a), Err(want), "{a}");
        }
        assert_eq!(
            validate_address(&format!("{}:1", "a".repeat(300))),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn wildcards_capture_one_label_into_the_address() {
        assert_eq!(
            captured("*.mc.example.com", "alpha.mc.example.com"),
            Some("alpha")
        );
        assert_eq!(
            captured("*.mc.example.com", "a.b.mc.example.com"),
            Some("a.b")
        );
        assert_eq!(captured("*.mc.example.com", "mc.example.com"), None);
        assert_eq!(captured("*.mc.example.com", "xmc.example.com"), None);
        assert_eq!(captured("*", "alpha.example.com"), None);
        assert_eq!(captured("alpha.example.com", "alpha.example.com"), None);

        let t = "{1}.internal:25565";
        assert_eq!(
            expand_address(t, Some("alpha")).as_deref(),
            Some("alpha.internal:25565")
        );
        for evil in ["a.b", "a:1", "a/b", "", "-a", "a_b", "é"] {
            assert_eq!(expand_address(t, Some(evil)), None, "{evil:?}");
        }
        assert_eq!(expand_address(t, None), None);
        assert_eq!(
            expand_address("10.0.0.1:1", None).as_deref(),
            Some("10.0.0.1:1")
        );
    }

    #[test]
    fn strategies_read_as_operators_write_them() {
        for s in [
            BackendStrategy::Failover,
            BackendStrategy::RoundRobin,
            BackendStrategy::Random,
            BackendStrategy::LeastPlayers,
        ] {
            assert_eq!(BackendStrategy::parse(s.name()), Some(s));
        }
        assert_eq!(
            BackendStrategy::parse(" Round_Robin "),
            Some(BackendStrategy::RoundRobin)
        );
        assert_eq!(BackendStrategy::parse("weighted"), None);
        assert_eq!(BackendStrategy::parse(""), None);
    }

    #[test]
    fn the_backend_set_starts_with_the_servers_address() {
        let b = |a: &str, p: i32| Backend {
            address: a.into(),
            weight: 1,
            priority: p,
        };
        let r = Route {
            address: "main:1".into(),
            backends: vec![b("spare:1", 0), b("first:1", -1), b("late:1", 5)],
            ..Route::default()
        };
        let order: Vec<String> = r.backend_set().into_iter().map(|b| b.address).collect();
        assert_eq!(order, ["first:1", "main:1", "spare:1", "late:1"]);
        assert_eq!(r.strategy(), BackendStrategy::Failover);
    }
}
