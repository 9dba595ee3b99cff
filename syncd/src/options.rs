//! The `server_backends` and `server_options` rows of a server, checked
//! before they reach any edge. Pure: rows in, proto values or the reason a
//! row is refused out. A refused row is skipped on its own (the server
//! keeps its other backends, or routes with the global defaults when its
//! options row is refused); the caller logs it, counts it and `syncd check`
//! lists it (see [`RowProblem`]).
use std::time::Duration;

use automc_proto::backend::{is_dns_label, validate_address};
use automc_proto::v1::{Backend, BackendStrategy, PlayerNames, RouteOptions};

/// Longest MOTD accepted (characters); a status JSON has to carry it.
pub const MAX_MOTD_CHARS: usize = 1024;
/// Largest favicon accepted: a 64x64 PNG is a few KiB; every edge holds it.
pub const MAX_FAVICON_BYTES: usize = 32 * 1024;
/// Most CIDRs in one allow or deny list.
pub const MAX_CIDRS: usize = 256;
/// Most extra backends per server (more are refused as one problem).
pub const MAX_BACKENDS: usize = 64;
/// Longest hold / sleep period accepted.
pub const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most names in one wake allow list.
pub const MAX_WAKE_ALLOW_PLAYERS: usize = 1024;
/// Highest backend weight.
pub const MAX_WEIGHT: i32 = 1000;

/// One `server_backends` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendRow {
    pub address: String,
    pub weight: i32,
    pub priority: i32,
}

/// One `server_options` row; `None` fields are NULL (or a column the
/// database does not have).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptionsRow {
    pub strategy: Option<String>,
    pub asleep_motd: Option<String>,
    pub starting_motd: Option<String>,
    pub favicon: Option<Vec<u8>>,
    pub max_players: Option<i64>,
    pub allow_cidrs: Option<Vec<String>>,
    pub deny_cidrs: Option<Vec<String>>,
    pub rewrite_host: Option<String>,
    pub proxy_protocol: Option<bool>,
    /// Seconds (`EXTRACT(EPOCH FROM ...)`).
    pub hold_timeout: Option<f64>,
    pub sleep_after: Option<f64>,
    pub failed_motd: Option<String>,
    pub stopping_motd: Option<String>,
    /// NULL: the edge's --wake-allow-players; an empty array: anyone.
    pub wake_allow_players: Option<Vec<String>>,
}

/// A row refused, naming the table, the server and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub table: &'static str,
    pub server: String,
    /// The row's key beyond the server (a backend's address).
    pub key: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(
                f,
                "{} row (server {:?}, address {:?}) skipped: {}",
                self.table, self.server, k, self.reason
            ),
            None => write!(
                f,
                "{} row (server {:?}) skipped: {}",
                self.table, self.server, self.reason
            ),
        }
    }
}

/// The valid backends of a server in (priority, address) order, without
/// duplicates of one address; problems for the others.
pub fn backends(server: &str, rows: &[BackendRow]) -> (Vec<Backend>, Vec<RowProblem>) {
    let mut out: Vec<Backend> = Vec::new();
    let mut problems = Vec::new();
    for row in rows {
        let problem = |reason: String| RowProblem {
            table: "server_backends",
            server: server.to_owned(),
            key: Some(row.address.clone()),
            reason,
        };
        let address = row.address.trim();
        if let Err(e) = validate_address(address) {
            problems.push(problem(e.to_string()));
            continue;
        }
        if !(0..=MAX_WEIGHT).contains(&row.weight) {
            problems.push(problem(format!(
                "weight {} is outside 0..={MAX_WEIGHT}",
                row.weight
            )));
            continue;
        }
        if out.iter().any(|b| b.address == address) {
            problems.push(problem("the address is listed twice".into()));
            continue;
        }
        if out.len() == MAX_BACKENDS {
            problems.push(problem(format!("more than {MAX_BACKENDS} backends")));
            continue;
        }
        out.push(Backend {
            address: address.to_owned(),
            weight: row.weight as u32,
            priority: row.priority,
        });
    }
    out.sort_by(|a, b| (a.priority, &a.address).cmp(&(b.priority, &b.address)));
    (out, problems)
}

/// A server's options row as sent to edges, or why the whole row is refused.
pub fn options(row: &OptionsRow) -> Result<RouteOptions, String> {
    let mut o = RouteOptions::default();
    if let Some(s) = &row.strategy {
        let strategy = BackendStrategy::parse(s).ok_or_else(|| {
            format!("unknown strategy {s:?} (failover, round-robin, random or least-players)")
        })?;
        o.set_strategy(strategy);
    }
    o.asleep_motd = motd("asleep_motd", &row.asleep_motd)?;
    o.starting_motd = motd("starting_motd", &row.starting_motd)?;
    o.failed_motd = motd("failed_motd", &row.failed_motd)?;
    o.stopping_motd = motd("stopping_motd", &row.stopping_motd)?;
    if let Some(png) = &row.favicon {
        check_favicon(png)?;
        o.favicon.clone_from(png);
    }
    if let Some(n) = row.max_players {
        o.max_players = Some(
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= i32::MAX as u32)
                .ok_or_else(|| format!("max_players {n} is negative"))?,
        );
    }
    o.allow_cidrs = cidrs("allow_cidrs", &row.allow_cidrs)?;
    o.deny_cidrs = cidrs("deny_cidrs", &row.deny_cidrs)?;
    if let Some(h) = &row.rewrite_host {
        let host = h.trim().trim_end_matches('.');
        let ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host.split('.').all(|l| is_dns_label(l, true)));
        if !ok {
            return Err(format!("rewrite_host {h:?} is not a hostname"));
        }
        o.rewrite_host = Some(host.to_owned());
    }
    o.proxy_protocol = row.proxy_protocol;
    o.hold_timeout_ms = period("hold_timeout", row.hold_timeout)?;
    o.sleep_after_ms = period("sleep_after", row.sleep_after)?;
    o.wake_allow_players = row.wake_allow_players.as_deref().map(players).transpose()?;
    Ok(o)
}

fn motd(column: &str, text: &Option<String>) -> Result<Option<String>, String> {
    match text {
        Some(t) if t.chars().count() > MAX_MOTD_CHARS => Err(format!(
            "{column} is longer than {MAX_MOTD_CHARS} characters"
        )),
        other => Ok(other.clone()),
    }
}

/// The PNG signature, then an IHDR chunk of 64x64: what the vanilla client
/// accepts as a server icon.
fn check_favicon(png: &[u8]) -> Result<(), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() > MAX_FAVICON_BYTES {
        return Err(format!(
            "favicon is {} bytes (at most {MAX_FAVICON_BYTES})",
            png.len()
        ));
    }
    if !png.starts_with(SIGNATURE) || png.get(12..16) != Some(b"IHDR".as_slice()) {
        return Err("favicon is not a PNG".into());
    }
    let dim = |at: usize| {
        png.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    match (dim(16), dim(20)) {
        (Some(64), Some(64)) => Ok(()),
        (Some(w), Some(h)) => Err(format!("favicon is {w}x{h} pixels; clients want 64x64")),
        _ => Err("favicon is not a PNG".into()),
    }
}

fn cidrs(column: &str, list: &Option<Vec<String>>) -> Result<Vec<String>, String> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_CIDRS {
        return Err(format!("{column} holds more than {MAX_CIDRS} entries"));
    }
    list.iter()
        .map(|c| {
            let c = c.trim();
            // A bare address is a one-address network, as Postgres' CIDR has it.
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.to_string())
                .map_err(|_| format!("{column} entry {c:?} is not a CIDR"))
        })
        .collect()
}

/// A wake allow list: names trimmed, each one a name a Login Start can carry,
/// duplicates (case-insensitive) dropped.
fn players(list: &[String]) -> Result<PlayerNames, String> {
    if list.len() > MAX_WAKE_ALLOW_PLAYERS {
        return Err(format!(
            "wake_allow_players holds more than {MAX_WAKE_ALLOW_PLAYERS} names"
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for n in list {
        let n = n.trim();
        if !mcproto::is_listable_username(n) {
            return Err(format!(
                "wake_allow_players entry {n:?} is not a player name \
                 (1 to {} characters, no spaces or commas)",
                mcproto::MAX_USERNAME_CHARS
            ));
        }
        if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            names.push(n.to_owned());
        }
    }
    Ok(PlayerNames { names })
}

fn period(column: &str, secs: Option<f64>) -> Result<Option<u64>, String> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_PERIOD.as_secs_f64() => {
            Ok(Some((s * 1000.0).round() as u64))
        }
        Some(s) => Err(format!(
            "{column} of {s} s is not between 0 and {} s",
            MAX_PERIOD.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64x64 PNG header (signature + IHDR); enough for the check.
    pub fn png(w: u32, h: u32) -> Vec<u8> {
        let mut p = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        p.extend(w.to_be_bytes());
        p.extend(h.to_be_bytes());
        p.extend([8, 6, 0, 0, 0]);
        p
    }

    #[test]
    fn valid_options_become_route_options() {
        let row = OptionsRow {
            strategy: Some("Round-Robin".into()),
            asleep_motd: Some("zzz".into()),
            favicon: Some(png(64, 64)),
            max_players: Some(20),
            allow_cidrs: Some(vec!["10.0.0.0/8".into(), "192.0.2.7".into()]),
            deny_cidrs: Some(vec!["10.9.0.0/16".into()]),
            rewrite_host: Some("Backend.Internal.".into()),
            hold_timeout: Some(90.0),
            ..OptionsRow::default()
        };
        let o = options(&row).expect("valid");
        assert_eq!(o.strategy(), BackendStrategy::RoundRobin);
        assert_eq!(o.asleep_motd.as_deref(), Some("zzz"));
        assert_eq!(o.starting_motd, None);
        assert_eq!(o.max_players, Some(20));
        assert_eq!(o.allow_cidrs, ["10.0.0.0/8", "192.0.2.7/32"]);
        assert_eq!(o.rewrite_host.as_deref(), Some("Backend.Internal"));
        assert_eq!(o.hold_timeout_ms, Some(90_000));
        assert_eq!(o.sleep_after_ms, None);
        assert_eq!(o.wake_allow_players, None, "NULL: the edge's flag");
        let open = OptionsRow {
            wake_allow_players: Some(Vec::new()),
            ..OptionsRow::default()
        };
        assert_eq!(
            options(&open).expect("empty list").wake_allow_players,
            Some(PlayerNames::default()),
            "an empty array stays distinct from NULL: anyone may wake"
        );
        let listed = OptionsRow {
            wake_allow_players: Some(vec![" Notch ".into(), "alex".into(), "NOTCH".into()]),
            ..OptionsRow::default()
        };
        assert_eq!(
            options(&listed).expect("names").wake_allow_players,
            Some(PlayerNames {
                names: vec!["Notch".into(), "alex".into()]
            })
        );
        assert_eq!(
            options(&OptionsRow::default()).expect("empty row"),
            RouteOptions::default()
        );
    }

    #[test]
    fn invalid_options_rows_are_refused_with_the_reason() {
        let cases: Vec<(OptionsRow, &str)> = vec![
            (
                OptionsRow {
                    strategy: Some("weighted".into()),
                    ..OptionsRow::default()
                },
                "unknown strategy \"weighted\"",
            ),
            (
                OptionsRow {
                    favicon: Some(b"GIF89a".to_vec()),
                    ..OptionsRow::default()
                },
                "favicon is not a PNG",
            ),
            (
                OptionsRow {
                    favicon: Some(png(128, 128)),
                    ..OptionsRow::default()
                },
                "128x128",
            ),
            (
                OptionsRow {
                    favicon: Some(vec![0; MAX_FAVICON_BYTES + 1]),
                    ..OptionsRow::default()
                },
                "bytes (at most",
            ),
            (
                OptionsRow {
                    max_players: Some(-1),
                    ..OptionsRow::default()
                },
                "max_players -1",
            ),
            (
                OptionsRow {
                    deny_cidrs: Some(vec!["10.0.0.0/33".into()]),
                    ..OptionsRow::default()
                },
                "deny_cidrs entry \"10.0.0.0/33\"",
            ),
            (
                OptionsRow {
                    rewrite_host: Some("a/b".into()),
                    ..OptionsRow::default()
                },
                "rewrite_host",
            ),
            (
                OptionsRow {
                    hold_timeout: Some(-5.0),
                    ..OptionsRow::default()
                },
                "hold_timeout",
            ),
            (
                OptionsRow {
                    asleep_motd: Some("x".repeat(MAX_MOTD_CHARS + 1)),
                    ..OptionsRow::default()
                },
                "asleep_motd is longer",
            ),
            (
                OptionsRow {
                    wake_allow_players: Some(vec!["Notch".into(), "two words".into()]),
                    ..OptionsRow::default()
                },
                "wake_allow_players entry \"two words\" is not a player name",
            ),
            (
                OptionsRow {
                    wake_allow_players: Some(vec!["x".repeat(17)]),
                    ..OptionsRow::default()
                },
                "is not a player name",
            ),
            (
                OptionsRow {
                    wake_allow_players: Some(vec!["p".into(); MAX_WAKE_ALLOW_PLAYERS + 1]),
                    ..OptionsRow::default()
                },
                "more than 1024 names",
            ),
        ];
        for (row, needle) in cases {
            let e = options(&row).expect_err(needle);
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn backend_rows_are_checked_one_by_one() {
        let row = |a: &str, w: i32, p: i32| BackendRow {
            address: a.into(),
            weight: w,
            priority: p,
        };
        let (ok, problems) = backends(
            "lobby",
            &[
                row("10.0.0.3:25565", 1, 2),
                row("not an address", 1, 0),
                row("10.0.0.2:25565", 5, 1),
                row("10.0.0.2:25565", 1, 1),
                row("10.0.0.4:25565", -1, 0),
                row(" 10.0.0.5:25565 ", 0, 1),
            ],
        );
        let got: Vec<(&str, u32, i32)> = ok
            .iter()
            .map(|b| (b.address.as_str(), b.weight, b.priority))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.2:25565", 5, 1),
                ("10.0.0.5:25565", 0, 1),
                ("10.0.0.3:25565", 1, 2)
            ]
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains(
            "server_backends row (server \"lobby\", address \"not an address\") skipped"
        ));
        assert!(text[1].contains("listed twice"));
        assert!(text[2].contains("weight -1"));
    }
}
