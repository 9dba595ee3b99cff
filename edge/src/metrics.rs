//! Prometheus metrics of one edge. Names are part of the contract (dashboards
//! and alerts depend on them); `prometheus-client` appends `_total` to
//! counters, so counters are registered without it.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label with a fixed set of values.
type Label = [(&'static str, &'static str); 1];
type Counters = Family<Label, Counter>;

/// Every metric the edge exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Counters,
    pub connections_active: Gauge,
    bytes: Counters,
    handshake_errors: Counters,
    route_lookups: Counters,
    pub sync_connected: Gauge,
    pub table_version: Gauge,
    pub table_age_seconds: Gauge<f64, AtomicU64>,
    pub held_logins: Gauge,
    wakes: Counters,
    refused: Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("automc_edge");
        let connections = Counters::default();
        registry.register(
            "connections",
            "Player connections by how they ended",
            connections.clone(),
        );
        let connections_active = Gauge::default();
        registry.register(
            "connections_active",
            "Player connections open now",
            connections_active.clone(),
        );
        let bytes = Counters::default();
        registry.register(
            "bytes",
            "Bytes spliced, upstream = player to backend",
            bytes.clone(),
        );
        let handshake_errors = Counters::default();
        registry.register(
            "handshake_errors",
            "Connections closed before a valid handshake, by reason",
            handshake_errors.clone(),
        );
        let route_lookups = Counters::default();
        registry.register(
            "route_lookups",
            "Hostname lookups by result",
            route_lookups.clone(),
        );
        let sync_connected = Gauge::default();
        registry.register(
            "sync_connected",
            "1 while a WatchRoutes stream to syncd is up",
            sync_connected.clone(),
        );
        let table_version = Gauge::default();
        registry.register(
            "table_version",
            "Version of the route table applied",
            table_version.clone(),
        );
        let table_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "table_age_seconds",
            "Seconds since the table last changed or was confirmed by syncd",
            table_age_seconds.clone(),
        );
        let held_logins = Gauge::default();
        registry.register(
            "held_logins",
            "Logins held while their server wakes",
            held_logins.clone(),
        );
        let wakes = Counters::default();
        registry.register("wakes", "Wake requests by outcome", wakes.clone());
        let refused = Counters::default();
        registry.register(
            "refused",
            "Connections refused by the edge, by reason",
            refused.clone(),
        );
        Self {
            registry,
            connections,
            connections_active,
            bytes,
            handshake_errors,
            route_lookups,
            sync_connected,
            table_version,
            table_age_seconds,
            held_logins,
            wakes,
            refused,
        }
    }

    pub fn connection_ended(&self, outcome: &'static str) {
        self.connections
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn add_bytes_upstream(&self, n: u64) {
        if n > 0 {
            self.bytes
                .get_or_create(&[("direction", "upstream")])
                .inc_by(n);
        }
    }

    pub fn add_bytes_downstream(&self, n: u64) {
        if n > 0 {
            self.bytes
                .get_or_create(&[("direction", "downstream")])
                .inc_by(n);
        }
    }

    /// The byte counter of one direction, for a splice to bump live.
    pub fn bytes_counter(&self, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&[("direction", direction)])
            .clone()
    }

    pub fn handshake_error(&self, reason: &'static str) {
        self.handshake_errors
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn route_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.route_lookups
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub fn wake(&self, outcome: &'static str) {
        self.wakes.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_contract() {
        let m = Metrics::new();
        m.connection_ended("proxied");
        m.add_bytes_upstream(3);
        m.add_bytes_downstream(4);
        m.handshake_error("timeout");
        m.route_lookup(true);
        m.route_lookup(false);
        m.wake("ok");
        m.refused("untrusted_proxy_header");
        let text = m.render();
        for needle in [
            "automc_edge_connections_total{outcome=\"proxied\"} 1",
            "automc_edge_connections_active 0",
            "automc_edge_bytes_total{direction=\"upstream\"} 3",
            "automc_edge_bytes_total{direction=\"downstream\"} 4",
            "automc_edge_handshake_errors_total{reason=\"timeout\"} 1",
            "automc_edge_route_lookups_total{result=\"hit\"} 1",
            "automc_edge_route_lookups_total{result=\"miss\"} 1",
            "automc_edge_sync_connected 0",
            "automc_edge_table_version 0",
            "automc_edge_table_age_seconds",
            "automc_edge_held_logins 0",
            "automc_edge_wakes_total{outcome=\"ok\"} 1",
            "automc_edge_refused_total{reason=\"untrusted_proxy_header\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
