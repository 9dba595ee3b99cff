//! Pure route logic: which server rows are routes, and what changed between
//! two tables. No I/O here, so every rule is covered by table-driven tests.
use std::collections::{BTreeMap, BTreeSet};

use automc_proto::v1::Route;
use automc_proto::{check_hostname_len, normalize_domain, RouteTable, MAX_HOSTNAME_CHARS};

use crate::options::{self, BackendRow, OptionsRow, RowProblem};

/// One `servers` row plus its alias domains, as read from Postgres.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerRow {
    pub name: String,
    pub domain: Option<String>,
    pub address: String,
    pub state: String,
    /// `None` when the column does not exist (original automc schema) or is NULL.
    pub enabled: Option<bool>,
    pub aliases: Vec<String>,
    /// `server_backends` rows (none when the table does not exist).
    pub backends: Vec<BackendRow>,
    /// The `server_options` row, when there is one.
    pub options: Option<OptionsRow>,
}

/// Most hostnames (domain and aliases, after deduplication) one route
/// routes; more are left out and told as a problem. Every edge holds every
/// hostname, and a route is sent whole in one watch message.
pub const MAX_HOSTNAMES_PER_ROUTE: usize = 1024;
/// Longest `servers.address` taken (a `host:port` is a few hundred bytes at
/// most): with the hostname and options bounds it keeps the largest route
/// well under a megabyte, far below any edge's decode limit.
pub const MAX_ROUTE_ADDRESS_BYTES: usize = 64 * 1024;
/// Longest `servers.state` taken (the known states are a few letters).
pub const MAX_STATE_BYTES: usize = 64;

/// The first characters of `s`, to name an oversized value in a log line.
fn shown(s: &str) -> String {
    const SHOWN: usize = 64;
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
        None => s.to_owned(),
    }
}

/// Why a row with an oversized field is not a route, if it has one.
fn oversized(row: &ServerRow) -> Option<String> {
    use crate::fleet::MAX_SERVER_NAME_BYTES;
    if row.name.len() > MAX_SERVER_NAME_BYTES {
        Some(format!("name is longer than {MAX_SERVER_NAME_BYTES} bytes"))
    } else if row.address.len() > MAX_ROUTE_ADDRESS_BYTES {
        Some(format!(
            "address is {} bytes (at most {MAX_ROUTE_ADDRESS_BYTES})",
            row.address.len()
        ))
    } else if row.state.len() > MAX_STATE_BYTES {
        Some(format!("state is longer than {MAX_STATE_BYTES} bytes"))
    } else {
        None
    }
}

/// Routes keyed by server name.
pub type Routes = BTreeMap<String, Route>;

/// The route a row describes, if it is one: enabled (not `false`), a
/// non-empty address, and at least one usable hostname. Hostnames are
/// normalised, the row's own domain first, then aliases in order, without
/// duplicates. Invalid backend and options rows, hostnames longer than a
/// handshake can carry and hostnames past [`MAX_HOSTNAMES_PER_ROUTE`] are
/// left out and told to `problems`; the route itself stays. A row with an
/// oversized name, address or state is not a route (also told).
pub fn route_from_row(row: ServerRow, problems: &mut Vec<RowProblem>) -> Option<Route> {
    if row.enabled == Some(false) || row.address.trim().is_empty() {
        return None;
    }
    if let Some(reason) = oversized(&row) {
        problems.push(RowProblem {
            table: "servers",
            server: shown(&row.name),
            key: None,
            reason,
        });
        return None;
    }
    let address = row.address.trim();
    if automc_proto::backend::has_capture(address) {
        // Only a template is checked: any other address routes as it always did.
        if let Err(e) = automc_proto::backend::validate_address(address) {
            problems.push(RowProblem {
                table: "servers",
                server: row.name,
                key: Some(address.to_owned()),
                reason: e.to_string(),
            });
            return None;
        }
    }
    let mut hostnames: Vec<String> =
        Vec::with_capacity((1 + row.aliases.len()).min(MAX_HOSTNAMES_PER_ROUTE));
    let candidates = row.domain.iter().chain(row.aliases.iter());
    for d in candidates {
        let Some(h) = normalize_domain(d) else {
            continue;
        };
        if check_hostname_len(&h).is_err() {
            problems.push(RowProblem {
                table: "server_aliases",
                server: row.name.clone(),
                key: None,
                reason: format!(
                    "hostname {:?} is longer than {MAX_HOSTNAME_CHARS} characters: no player can send it",
                    shown(&h)
                ),
            });
            continue;
        }
        if hostnames.contains(&h) {
            continue;
        }
        if hostnames.len() == MAX_HOSTNAMES_PER_ROUTE {
            problems.push(RowProblem {
                table: "server_aliases",
                server: row.name.clone(),
                key: None,
                reason: format!(
                    "more than {MAX_HOSTNAMES_PER_ROUTE} hostnames: the rest are left out"
                ),
            });
            break;
        }
        hostnames.push(h);
    }
    if hostnames.is_empty() {
        return None;
    }
    let (backends, bad) = options::backends(&row.name, &row.backends);
    problems.extend(bad);
    let options = row.options.and_then(|o| match options::options(&o) {
        Ok(o) => Some(Box::new(o)),
        Err(reason) => {
            problems.push(RowProblem {
                table: "server_options",
                server: row.name.clone(),
                key: None,
                reason,
            });
            None
        }
    });
    Some(Route {
        server: row.name,
        hostnames,
        address: address.to_owned(),
        state: row.state,
        backends,
        options,
    })
}

/// Routes of `rows`, and the rows refused on the way.
pub fn routes_from_rows(rows: impl IntoIterator<Item = ServerRow>) -> (Routes, Vec<RowProblem>) {
    let mut problems = Vec::new();
    let routes = rows
        .into_iter()
        .filter_map(|r| route_from_row(r, &mut problems))
        .map(|r| (r.server.clone(), r))
        .collect();
    (routes, problems)
}

/// A change set: whole routes added or changed, servers whose route is gone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub upserts: Vec<Route>,
    pub removed: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upserts.len() + self.removed.len()
    }

    /// Apply to a route map.
    pub fn apply_to(&self, routes: &mut Routes) {
        for r in &self.upserts {
            routes.insert(r.server.clone(), r.clone());
        }
        for s in &self.removed {
            routes.remove(s);
        }
    }
}

/// Everything that differs between `old` and `new` (a full re-read).
pub fn diff_all(old: &RouteTable, new: &Routes) -> Change {
    let mut change = Change::default();
    for (name, route) in new {
        if old.get(name) != Some(route) {
            change.upserts.push(route.clone());
        }
    }
    for r in old.routes() {
        if !new.contains_key(&r.server) {
            change.removed.push(r.server.clone());
        }
    }
    change
}

/// What differs for the servers in `names` only, given their fresh routes
/// (a server in `names` missing from `fresh` has no route any more).
pub fn diff_some(old: &RouteTable, names: &BTreeSet<String>, fresh: &Routes) -> Change {
    let mut change = Change::default();
    for name in names {
        match (old.get(name), fresh.get(name)) {
            (before, Some(now)) if before != Some(now) => change.upserts.push(now.clone()),
            (Some(_), None) => change.removed.push(name.clone()),
            _ => {}
        }
    }
    change
}

/// One change set equivalent to applying `changes` in order: what an edge
/// that missed them needs. A server's last word wins.
pub fn compose<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Change {
    let mut last: BTreeMap<&str, Option<&Route>> = BTreeMap::new();
    for c in changes {
        for r in &c.upserts {
            last.insert(r.server.as_str(), Some(r));
        }
        for s in &c.removed {
            last.insert(s.as_str(), None);
        }
    }
    let mut out = Change::default();
    for (server, route) in last {
        match route {
            Some(r) => out.upserts.push(r.clone()),
            None => out.removed.push(server.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, domain: Option<&str>, address: &str) -> ServerRow {
        ServerRow {
            name: name.into(),
            domain: domain.map(Into::into),
            address: address.into(),
            state: "running".into(),
            enabled: Some(true),
            aliases: vec![],
            ..ServerRow::default()
        }
    }

    fn route(name: &str, hosts: &[&str], address: &str) -> Route {
        Route {
            server: name.into(),
            hostnames: hosts.iter().map(|h| (*h).to_owned()).collect(),
            address: address.into(),
            state: "running".into(),
            ..Route::default()
        }
    }

    #[test]
    fn which_rows_are_routes() {
        let disabled = ServerRow {
            enabled: Some(false),
            ..row("a", Some("a.example.com"), "10.0.0.1:25565")
        };
        let no_enabled_column = ServerRow {
            enabled: None,
            ..row("a", Some("a.example.com"), "10.0.0.1:25565")
        };
        let alias_only = ServerRow {
            aliases: vec!["b.example.com".into()],
            ..row("a", None, "10.0.0.1:25565")
        };
        let mixed_case = ServerRow {
            aliases: vec!["A.Example.COM".into(), "*.Games.example.com.".into()],
            ..row("a", Some("A.example.com."), " 10.0.0.1:25565 ")
        };
        let cases: Vec<(&str, ServerRow, Option<Route>)> = vec![
            (
                "plain row",
                row("a", Some("a.example.com"), "10.0.0.1:25565"),
                Some(route("a", &["a.example.com"], "10.0.0.1:25565")),
            ),
            ("disabled", disabled, None),
            (
                "original schema without enabled",
                no_enabled_column,
                Some(route("a", &["a.example.com"], "10.0.0.1:25565")),
            ),
            ("NULL domain", row("a", None, "10.0.0.1:25565"), None),
            ("empty domain", row("a", Some(""), "10.0.0.1:25565"), None),
            ("blank domain", row("a", Some("  "), "10.0.0.1:25565"), None),
            ("empty address", row("a", Some("a.example.com"), ""), None),
            (
                "alias only",
                alias_only,
                Some(route("a", &["b.example.com"], "10.0.0.1:25565")),
            ),
            (
                "normalised and deduplicated",
                mixed_case,
                Some(route(
                    "a",
                    &["a.example.com", "*.games.example.com"],
                    "10.0.0.1:25565",
                )),
            ),
            (
                "catch-all",
                row("a", Some("*"), "10.0.0.1:25565"),
                Some(route("a", &["*"], "10.0.0.1:25565")),
            ),
        ];
        for (what, input, want) in cases {
            let mut problems = Vec::new();
            assert_eq!(route_from_row(input, &mut problems), want, "{what}");
            assert!(problems.is_empty(), "{what}: {problems:?}");
        }
    }

    #[test]
    fn bad_backend_and_options_rows_are_left_out_and_the_route_stays() {
        let input = ServerRow {
            backends: vec![
                BackendRow {
                    address: "10.0.0.2:25565".into(),
                    weight: 1,
                    priority: 0,
                },
                BackendRow {
                    address: "nope".into(),
                    weight: 1,
                    priority: 0,
                },
            ],
            options: Some(OptionsRow {
                strategy: Some("fastest".into()),
                ..OptionsRow::default()
            }),
            ..row("a", Some("a.example.com"), "10.0.0.1:25565")
        };
        let mut problems = Vec::new();
        let r = route_from_row(input, &mut problems).expect("still a route");
        assert_eq!(r.backends.len(), 1);
        assert!(r.options.is_none());
        let tables: Vec<&str> = problems.iter().map(|p| p.table).collect();
        assert_eq!(tables, ["server_backends", "server_options"]);

        let template = row("w", Some("*.mc.example.com"), "{1}:bad");
        assert!(route_from_row(template, &mut problems).is_none());
        assert_eq!(problems.last().map(|p| p.table), Some("servers"));
    }

    #[test]
    fn oversized_rows_and_hostnames_are_bounded_and_told() {
        let mut problems = Vec::new();
        for big in [
            row(&"n".repeat(256), Some("a.example.com"), "10.0.0.1:25565"),
            row(
                "a",
                Some("a.example.com"),
                &format!("10.0.0.1:{}", "9".repeat(MAX_ROUTE_ADDRESS_BYTES)),
            ),
            ServerRow {
                state: "s".repeat(MAX_STATE_BYTES + 1),
                ..row("a", Some("a.example.com"), "10.0.0.1:25565")
            },
        ] {
            assert_eq!(route_from_row(big, &mut problems), None);
            let told = problems.last().expect("told");
            assert_eq!(told.table, "servers");
            assert!(told.server.len() < 256, "the name is cut in the report");
        }

        let long_host = format!("{}.example.com", "h".repeat(MAX_HOSTNAME_CHARS));
        let mut aliases: Vec<String> = vec![long_host, "A.example.com".into()];
        aliases.extend((0..MAX_HOSTNAMES_PER_ROUTE + 10).map(|i| format!("h{i}.example.com")));
        let many = ServerRow {
            aliases,
            ..row("a", Some("a.example.com"), "10.0.0.1:25565")
        };
        let mut problems = Vec::new();
        let r = route_from_row(many, &mut problems).expect("still a route");
        assert_eq!(r.hostnames.len(), MAX_HOSTNAMES_PER_ROUTE);
        assert_eq!(
            r.hostnames[0], "a.example.com",
            "the row's own domain first"
        );
        assert_eq!(r.hostnames[1], "h0.example.com", "the duplicate is dropped");
        let reasons: Vec<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("longer than 255"), "{reasons:?}");
        assert!(reasons[1].contains("more than 1024"), "{reasons:?}");
    }

    #[test]
    fn an_options_change_is_a_change() {
        let a = route("a", &["a.x"], "1:1");
        let with = Route {
            options: Some(Box::new(automc_proto::v1::RouteOptions {
                max_players: Some(5),
                ..Default::default()
            })),
            ..a.clone()
        };
        let got = diff_all(
            &RouteTable::from_routes([a.clone()]),
            &routes(vec![with.clone()]),
        );
        assert_eq!(got.upserts, vec![with.clone()]);
        let t = RouteTable::from_routes([a]);
        let t2 = RouteTable::from_routes([with]);
        assert_ne!(
            t.bucket_hashes(),
            t2.bucket_hashes(),
            "bucket resync sees it too"
        );
    }

    fn routes(list: Vec<Route>) -> Routes {
        list.into_iter().map(|r| (r.server.clone(), r)).collect()
    }

    #[test]
    fn full_diff_reports_only_real_changes() {
        let a = route("a", &["a.x"], "1:1");
        let b = route("b", &["b.x"], "2:2");
        let b2 = route("b", &["b.x"], "2:3");
        let c = route("c", &["c.x"], "3:3");
        let stopped = Route {
            state: "stopped".into(),
            ..a.clone()
        };
        let cases = vec![
            (
                "nothing changed",
                vec![a.clone()],
                vec![a.clone()],
                vec![],
                vec![],
            ),
            (
                "added",
                vec![a.clone()],
                vec![a.clone(), c.clone()],
                vec![c.clone()],
                vec![],
            ),
            (
                "removed",
                vec![a.clone(), b.clone()],
                vec![a.clone()],
                vec![],
                vec!["b"],
            ),
            (
                "address changed",
                vec![b.clone()],
                vec![b2.clone()],
                vec![b2.clone()],
                vec![],
            ),
            (
                "state changed",
                vec![a.clone()],
                vec![stopped.clone()],
                vec![stopped],
                vec![],
            ),
            (
                "from empty",
                vec![],
                vec![a.clone()],
                vec![a.clone()],
                vec![],
            ),
            (
                "to empty",
                vec![a.clone(), c.clone()],
                vec![],
                vec![],
                vec!["a", "c"],
            ),
        ];
        for (what, old, new, upserts, removed) in cases {
            let got = diff_all(&RouteTable::from_routes(old), &routes(new));
            let want = Change {
                upserts,
                removed: removed.into_iter().map(String::from).collect(),
            };
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn partial_diff_looks_only_at_named_servers() {
        let a = route("a", &["a.x"], "1:1");
        let a2 = route("a", &["a.x"], "1:2");
        let b = route("b", &["b.x"], "2:2");
        let old = RouteTable::from_routes([a.clone(), b.clone()]);
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let cases = vec![
            (
                "changed",
                names(&["a"]),
                routes(vec![a2.clone()]),
                vec![a2.clone()],
                vec![],
            ),
            (
                "unchanged",
                names(&["a"]),
                routes(vec![a.clone()]),
                vec![],
                vec![],
            ),
            ("gone", names(&["b"]), routes(vec![]), vec![], vec!["b"]),
            (
                "never existed",
                names(&["zz"]),
                routes(vec![]),
                vec![],
                vec![],
            ),
            (
                "b not named is left alone",
                names(&["a"]),
                routes(vec![a2.clone()]),
                vec![a2],
                vec![],
            ),
        ];
        for (what, n, fresh, upserts, removed) in cases {
            let got = diff_some(&old, &n, &fresh);
            let want = Change {
                upserts,
                removed: removed.into_iter().map(String::from).collect(),
            };
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn composed_changes_equal_applying_them_in_order() {
        let a = route("a", &["a.x"], "1:1");
        let a2 = route("a", &["a.x"], "1:2");
        let b = route("b", &["b.x"], "2:2");
        let steps = [
            Change {
                upserts: vec![a.clone(), b.clone()],
                removed: vec![],
            },
            Change {
                upserts: vec![a2.clone()],
                removed: vec!["b".into()],
            },
            Change {
                upserts: vec![b.clone()],
                removed: vec!["a".into()],
            },
        ];
        let mut start = routes(vec![route("a", &["a.x"], "0:0")]);
        let mut stepwise = start.clone();
        for s in &steps {
            s.apply_to(&mut stepwise);
        }
        compose(&steps).apply_to(&mut start);
        assert_eq!(start, stepwise);
        let c = compose(&steps);
        assert_eq!(c.upserts, vec![b]);
        assert_eq!(c.removed, vec!["a".to_owned()]);
    }
}
