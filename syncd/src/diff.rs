//! Pure route logic: which server rows are routes, and what changed between
//! two tables. No I/O here, so every rule is covered by table-driven tests.
use std::collections::{BTreeMap, BTreeSet};

use automc_proto::v1::Route;
use automc_proto::{normalize_domain, RouteTable};

/// One `servers` row plus its alias domains, as read from Postgres.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerRow {
    pub name: String,
    pub domain: Option<String>,
    pub address: String,
    pub state: String,
    /// `None` when the column does not exist (original automc schema) or is NULL.
    pub enabled: Option<bool>,
    pub aliases: Vec<String>,
}

/// Routes keyed by server name.
pub type Routes = BTreeMap<String, Route>;

/// The route a row describes, if it is one: enabled (not `false`), a
/// non-empty address, and at least one usable hostname. Hostnames are
/// normalised, the row's own domain first, then aliases in order, without
/// duplicates.
pub fn route_from_row(row: ServerRow) -> Option<Route> {
    if row.enabled == Some(false) || row.address.trim().is_empty() {
        return None;
    }
    let mut hostnames: Vec<String> = Vec::with_capacity(1 + row.aliases.len());
    let candidates = row.domain.iter().chain(row.aliases.iter());
    for d in candidates {
        if let Some(h) = normalize_domain(d) {
            if !hostnames.contains(&h) {
                hostnames.push(h);
            }
        }
    }
    if hostnames.is_empty() {
        return None;
    }
    Some(Route {
        server: row.name,
        hostnames,
        address: row.address.trim().to_owned(),
        state: row.state,
    })
}

pub fn routes_from_rows(rows: impl IntoIterator<Item = ServerRow>) -> Routes {
    rows.into_iter()
        .filter_map(route_from_row)
        .map(|r| (r.server.clone(), r))
        .collect()
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
        }
    }

    fn route(name: &str, hosts: &[&str], address: &str) -> Route {
        Route {
            server: name.into(),
            hostnames: hosts.iter().map(|h| (*h).to_owned()).collect(),
            address: address.into(),
            state: "running".into(),
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
            assert_eq!(route_from_row(input), want, "{what}");
        }
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
