//! The route table and its matching rules, shared by syncd (`GetRoute`) and
//! every edge (the connection path), so both always agree.
//!
//! Rules: matching is on the normalised hostname; an exact name wins over a
//! wildcard, a longer wildcard suffix over a shorter one, and `*` is the
//! catch-all default. `*.example.com` matches any name ending in
//! `.example.com` but not `example.com` itself. When two routes claim the same
//! hostname, a server's own `domain` beats another's alias, then the smaller
//! server name wins, so every process resolves a conflict the same way.
use std::collections::{BTreeMap, HashMap};

use crate::hostname::normalize_player_hostname;
use crate::v1::{GetRouteResponse, Route};

/// What kind of pattern matched a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
    Default,
}

/// A successful lookup.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub route: &'a Route,
    pub kind: MatchKind,
    /// The pattern that matched: the name itself, `*.suffix` or `*`.
    pub pattern: &'a str,
}

/// Claim rank of a hostname: 0 for a server's own domain, 1 for an alias.
type Claim = (u8, String);

/// Routes keyed by server name plus a hostname index.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: BTreeMap<String, Route>,
    /// hostname pattern → every server claiming it, best first (a sorted
    /// `Vec`: almost always one claim, and a `BTreeSet` node per hostname
    /// costs ~400 bytes at 100k routes).
    claims: HashMap<String, Vec<Claim>>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a table from whole routes.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut t = Self::new();
        for r in routes {
            t.upsert(r);
        }
        t
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes in server-name order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    pub fn get(&self, server: &str) -> Option<&Route> {
        self.routes.get(server)
    }

    /// Add or replace the route of `route.server`.
    pub fn upsert(&mut self, route: Route) {
        self.remove(&route.server.clone());
        for (i, host) in route.hostnames.iter().enumerate() {
            let rank = u8::from(i > 0);
            let claim = (rank, route.server.clone());
            let set = self.claims.entry(host.clone()).or_default();
            if let Err(at) = set.binary_search(&claim) {
                set.insert(at, claim);
            }
        }
        self.routes.insert(route.server.clone(), route);
    }

    /// Remove the route of `server`; returns it when it existed.
    pub fn remove(&mut self, server: &str) -> Option<Route> {
        let old = self.routes.remove(server)?;
        for (i, host) in old.hostnames.iter().enumerate() {
            let rank = u8::from(i > 0);
            if let Some(set) = self.claims.get_mut(host) {
                if let Ok(at) = set.binary_search(&(rank, server.to_owned())) {
                    set.remove(at);
                }
                if set.is_empty() {
                    self.claims.remove(host);
                }
            }
        }
        Some(old)
    }

    /// Apply a delta: upserts, then removals.
    pub fn apply(&mut self, upserts: impl IntoIterator<Item = Route>, removed: &[String]) {
        for r in upserts {
            self.upsert(r);
        }
        for s in removed {
            self.remove(s);
        }
    }

    fn owner(&self, pattern: &str) -> Option<(&Route, &str)> {
        let (key, set) = self.claims.get_key_value(pattern)?;
        let (_, server) = set.first()?;
        Some((self.routes.get(server)?, key.as_str()))
    }

    /// Resolve an already normalised hostname (see
    /// [`crate::normalize_player_hostname`]).
    pub fn lookup(&self, host: &str) -> Option<Match<'_>> {
        if !host.is_empty() {
            if let Some((route, pattern)) = self.owner(host) {
                return Some(Match {
                    route,
                    kind: MatchKind::Exact,
                    pattern,
                });
            }
            // Longest suffix first: for a.b.c try *.b.c, then *.c.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if rest.is_empty() {
                    break;
                }
                let pattern = format!("*.{rest}");
                if let Some((route, pattern)) = self.owner(&pattern) {
                    return Some(Match {
                        route,
                        kind: MatchKind::Wildcard,
                        pattern,
                    });
                }
            }
        }
        let (route, pattern) = self.owner("*")?;
        Some(Match {
            route,
            kind: MatchKind::Default,
            pattern,
        })
    }
}

impl RouteTable {
    /// Answer a `GetRoute` for what a player typed: normalise it exactly as
    /// the edge's connection path does, then look it up. syncd and every
    /// edge's admin API answer through this one function.
    pub fn resolve(&self, hostname: &str) -> GetRouteResponse {
        let normalized = normalize_player_hostname(hostname);
        match self.lookup(&normalized) {
            Some(m) => GetRouteResponse {
                found: true,
                route: Some(m.route.clone()),
                matched: m.pattern.to_owned(),
                normalized,
            },
            None => GetRouteResponse {
                found: false,
                route: None,
                matched: String::new(),
                normalized,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(server: &str, hosts: &[&str], address: &str) -> Route {
        Route {
            server: server.into(),
            hostnames: hosts.iter().map(|h| (*h).to_owned()).collect(),
            address: address.into(),
            state: "running".into(),
        }
    }

    fn resolve(t: &RouteTable, host: &str) -> Option<(String, MatchKind)> {
        t.lookup(host).map(|m| (m.route.server.clone(), m.kind))
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let t = RouteTable::from_routes([
            route("lobby", &["lobby.example.com"], "10.0.0.1:25565"),
            route("any", &["*.example.com"], "10.0.0.2:25565"),
            route("deep", &["*.eu.example.com"], "10.0.0.3:25565"),
            route("fallback", &["*"], "10.0.0.4:25565"),
        ]);
        let cases = [
            ("lobby.example.com", Some(("lobby", MatchKind::Exact))),
            ("x.example.com", Some(("any", MatchKind::Wildcard))),
            ("a.b.example.com", Some(("any", MatchKind::Wildcard))),
            ("x.eu.example.com", Some(("deep", MatchKind::Wildcard))),
            ("eu.example.com", Some(("any", MatchKind::Wildcard))),
            ("example.com", Some(("fallback", MatchKind::Default))),
            ("other.net", Some(("fallback", MatchKind::Default))),
            ("", Some(("fallback", MatchKind::Default))),
        ];
        for (host, want) in cases {
            let got = resolve(&t, host);
            let want = want.map(|(s, k)| (s.to_owned(), k));
            assert_eq!(got, want, "host {host}");
        }
    }

    #[test]
    fn no_default_means_no_match() {
        let t = RouteTable::from_routes([route("a", &["*.example.com"], "x:1")]);
        assert!(t.lookup("example.com").is_none());
        assert!(t.lookup("example.org").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn aliases_route_to_their_server() {
        let t = RouteTable::from_routes([route(
            "survival",
            &[
                "survival.example.com",
                "smp.example.com",
                "*.smp.example.com",
            ],
            "10.0.0.9:25565",
        )]);
        for host in [
            "survival.example.com",
            "smp.example.com",
            "x.smp.example.com",
        ] {
            assert_eq!(
                t.lookup(host).map(|m| m.route.server.as_str()),
                Some("survival")
            );
        }
    }

    #[test]
    fn own_domain_beats_alias_and_conflicts_resolve_by_name() {
        let mut t = RouteTable::from_routes([
            route("b", &["b.example.com", "shared.example.com"], "b:1"),
            route("a", &["a.example.com", "shared.example.com"], "a:1"),
        ]);
        assert_eq!(
            t.lookup("shared.example.com")
                .map(|m| m.route.server.as_str()),
            Some("a")
        );
        t.upsert(route("z", &["shared.example.com"], "z:1"));
        assert_eq!(
            t.lookup("shared.example.com")
                .map(|m| m.route.server.as_str()),
            Some("z")
        );
        t.remove("z");
        assert_eq!(
            t.lookup("shared.example.com")
                .map(|m| m.route.server.as_str()),
            Some("a")
        );
        t.remove("a");
        assert_eq!(
            t.lookup("shared.example.com")
                .map(|m| m.route.server.as_str()),
            Some("b")
        );
    }

    #[test]
    fn upsert_replaces_hostnames_and_remove_forgets_them() {
        let mut t = RouteTable::from_routes([route("s", &["old.example.com"], "s:1")]);
        t.upsert(route("s", &["new.example.com"], "s:2"));
        assert!(t.lookup("old.example.com").is_none());
        assert_eq!(
            t.lookup("new.example.com")
                .map(|m| m.route.address.as_str()),
            Some("s:2")
        );
        assert_eq!(t.len(), 1);
        t.apply([], &["s".to_owned()]);
        assert!(t.is_empty());
        assert!(t.lookup("new.example.com").is_none());
    }

    #[test]
    fn resolve_normalises_like_the_edge_and_names_the_pattern() {
        let t = RouteTable::from_routes([route("any", &["*.example.com"], "a:1")]);
        let hit = t.resolve("Play.Example.com.\0FML2\0");
        assert!(hit.found);
        assert_eq!(hit.normalized, "play.example.com");
        assert_eq!(hit.matched, "*.example.com");
        assert_eq!(hit.route.map(|r| r.server), Some("any".to_owned()));
        let miss = t.resolve("example.org");
        assert!(!miss.found && miss.route.is_none() && miss.matched.is_empty());
        assert_eq!(miss.normalized, "example.org");
    }
}
