//! Prometheus metrics of syncd. Names are part of the contract (dashboards
//! and alerts): keep them exactly. prometheus-client appends `_total` to
//! counters, so counters are registered without the suffix.
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every syncd metric, cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub routes: Gauge,
    pub table_version: Gauge,
    pub notifications: Counter,
    pub reloads: Counter,
    pub pg_reconnects: Counter,
    pub pg_connected: Gauge,
    pub watchers: Gauge,
    pub watchers_cut: Counter,
    pub watchers_stalled: Counter,
    pub watchers_refused: Counter,
    pub watcher_lag_max: Gauge,
    pub grpc_connections: Gauge,
    pub grpc_handshakes: Gauge,
    grpc_refused: Family<Labels, Counter>,
    pub grpc_unauthenticated: Gauge,
    wakes: Family<Labels, Counter>,
    pub wake_duration: Histogram,
    waker_http_responses: Family<Labels, Counter>,
    pub session_reports: Counter,
    pub session_entries_refused: Counter,
    pub counts_sent: Counter,
    pub fleet_players: Gauge,
    pub unknown_edges: Gauge,
    server_players: Family<Labels, Gauge>,
    sleeps: Family<Labels, Counter>,
    pub events_dropped: Counter,
    webhooks: Family<Labels, Counter>,
    rows_skipped: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let routes = Gauge::default();
        let table_version = Gauge::default();
        let notifications = Counter::default();
        let reloads = Counter::default();
        let pg_reconnects = Counter::default();
        let pg_connected = Gauge::default();
        let watchers = Gauge::default();
        let watchers_cut = Counter::default();
        let watchers_stalled = Counter::default();
        let watchers_refused = Counter::default();
        let watcher_lag_max = Gauge::default();
        let grpc_connections = Gauge::default();
        let grpc_handshakes = Gauge::default();
        let grpc_refused = Family::<Labels, Counter>::default();
        let grpc_unauthenticated = Gauge::default();
        let wakes = Family::<Labels, Counter>::default();
        let wake_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let waker_http_responses = Family::<Labels, Counter>::default();
        let session_reports = Counter::default();
        let session_entries_refused = Counter::default();
        let counts_sent = Counter::default();
        let fleet_players = Gauge::default();
        let unknown_edges = Gauge::default();
        let server_players = Family::<Labels, Gauge>::default();
        let sleeps = Family::<Labels, Counter>::default();
        let events_dropped = Counter::default();
        let webhooks = Family::<Labels, Counter>::default();
        let rows_skipped = Family::<Labels, Counter>::default();
        r.register(
            "automc_syncd_rows_skipped",
            "Invalid server_backends / server_options rows skipped on a read, by table",
            rows_skipped.clone(),
        );
        r.register("automc_syncd_routes", "Routes in the table", routes.clone());
        r.register(
            "automc_syncd_table_version",
            "Version of the route table (bumps on every applied change set)",
            table_version.clone(),
        );
        r.register(
            "automc_syncd_notifications",
            "NOTIFY messages received on automc_routes_changed",
            notifications.clone(),
        );
        r.register(
            "automc_syncd_reloads",
            "Re-reads of the servers table (full or partial)",
            reloads.clone(),
        );
        r.register(
            "automc_syncd_pg_reconnects",
            "Reconnects of the LISTEN connection",
            pg_reconnects.clone(),
        );
        r.register(
            "automc_syncd_pg_connected",
            "1 while the LISTEN connection is up",
            pg_connected.clone(),
        );
        r.register(
            "automc_syncd_watchers",
            "Connected WatchRoutes streams",
            watchers.clone(),
        );
        r.register(
            "automc_syncd_watchers_cut",
            "Watchers cut off because their queue was full",
            watchers_cut.clone(),
        );
        r.register(
            "automc_syncd_watchers_stalled",
            "Watchers cut off because they did not take a message within the send timeout",
            watchers_stalled.clone(),
        );
        r.register(
            "automc_syncd_watchers_refused",
            "WatchRoutes calls refused: too many watchers from one peer address",
            watchers_refused.clone(),
        );
        r.register(
            "automc_syncd_watcher_lag_max",
            "Largest table version minus acknowledged version over all watchers",
            watcher_lag_max.clone(),
        );
        r.register(
            "automc_syncd_grpc_connections",
            "gRPC connections open (handshaking or established)",
            grpc_connections.clone(),
        );
        r.register(
            "automc_syncd_grpc_handshakes",
            "gRPC connections still in their TLS / HTTP/2 handshake",
            grpc_handshakes.clone(),
        );
        r.register(
            "automc_syncd_grpc_connections_refused",
            "gRPC connections refused at accept or cut during their handshake, by reason",
            grpc_refused.clone(),
        );
        r.register(
            "automc_syncd_grpc_unauthenticated",
            "1 when RouteSync is served on a non-loopback address without a token or mutual TLS (--allow-unauthenticated)",
            grpc_unauthenticated.clone(),
        );
        r.register("automc_syncd_wakes", "Wakes by outcome", wakes.clone());
        r.register(
            "automc_syncd_wake_duration_seconds",
            "Duration of wakes, from the first caller to the outcome",
            wake_duration.clone(),
        );
        r.register(
            "automc_syncd_waker_http_responses",
            "HTTP responses from the waker by status (or transport error)",
            waker_http_responses.clone(),
        );
        r.register(
            "automc_syncd_session_reports",
            "Session reports received from edges",
            session_reports.clone(),
        );
        r.register(
            "automc_syncd_counts_sent",
            "Player counts sets queued to edges (each merges what changed since the last)",
            counts_sent.clone(),
        );
        r.register(
            "automc_syncd_session_entries_refused",
            "Session report entries refused (bad names, per-edge caps)",
            session_entries_refused.clone(),
        );
        r.register(
            "automc_syncd_fleet_players",
            "Players on every server across every edge",
            fleet_players.clone(),
        );
        r.register(
            "automc_syncd_unknown_edges",
            "Edges whose stream dropped, counted until their grace period passes",
            unknown_edges.clone(),
        );
        r.register(
            "automc_syncd_server_players",
            "Players per server across every edge (off with --player-metrics-per-server=false)",
            server_players.clone(),
        );
        r.register(
            "automc_syncd_sleeps",
            "Stop requests to the waker by outcome",
            sleeps.clone(),
        );
        r.register(
            "automc_syncd_events_dropped",
            "Fleet events a WatchEvents stream or webhook lost because it fell behind",
            events_dropped.clone(),
        );
        r.register(
            "automc_syncd_webhook_deliveries",
            "Webhook deliveries by outcome (delivered, failed after retries)",
            webhooks.clone(),
        );
        Self {
            registry: Arc::new(r),
            routes,
            table_version,
            notifications,
            reloads,
            pg_reconnects,
            pg_connected,
            watchers,
            watchers_cut,
            watchers_stalled,
            watchers_refused,
            watcher_lag_max,
            grpc_connections,
            grpc_handshakes,
            grpc_refused,
            grpc_unauthenticated,
            wakes,
            wake_duration,
            waker_http_responses,
            session_reports,
            counts_sent,
            session_entries_refused,
            fleet_players,
            unknown_edges,
            server_players,
            sleeps,
            events_dropped,
            webhooks,
            rows_skipped,
        }
    }

    /// An invalid row of `table` was left out of a read.
    pub fn row_skipped(&self, table: &str) {
        self.rows_skipped
            .get_or_create(&vec![("table".to_owned(), table.to_owned())])
            .inc();
    }

    pub fn webhook_outcome(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    pub fn sleep_outcome(&self, outcome: &str) {
        self.sleeps
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    /// Set the per-server player gauge of `server`.
    pub fn set_server_players(&self, server: &str, players: i64) {
        self.server_players
            .get_or_create(&vec![("server".to_owned(), server.to_owned())])
            .set(players);
    }

    /// Drop the per-server player series of `server`.
    pub fn remove_server_players(&self, server: &str) {
        self.server_players
            .remove(&vec![("server".to_owned(), server.to_owned())]);
    }

    pub fn wake_outcome(&self, outcome: &str) {
        self.wakes
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    pub fn grpc_refused(&self, reason: &str) {
        self.grpc_refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Make a refusal reason show as 0 before it first happens.
    pub fn grpc_refused_reason(&self, reason: &str) {
        let _ = self
            .grpc_refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())]);
    }

    pub fn waker_response(&self, status: &str) {
        self.waker_http_responses
            .get_or_create(&vec![("status".to_owned(), status.to_owned())])
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_match_the_contract() {
        let m = Metrics::new();
        m.wake_outcome("success");
        m.waker_response("202");
        m.sleep_outcome("stopped");
        m.set_server_players("lobby", 3);
        m.grpc_refused("not_http2");
        let text = m.render();
        for name in [
            "automc_syncd_routes ",
            "automc_syncd_table_version ",
            "automc_syncd_notifications_total ",
            "automc_syncd_reloads_total ",
            "automc_syncd_pg_reconnects_total ",
            "automc_syncd_pg_connected ",
            "automc_syncd_watchers ",
            "automc_syncd_watchers_cut_total ",
            "automc_syncd_watchers_stalled_total ",
            "automc_syncd_watchers_refused_total ",
            "automc_syncd_watcher_lag_max ",
            "automc_syncd_grpc_connections ",
            "automc_syncd_grpc_handshakes ",
            "automc_syncd_grpc_connections_refused_total{reason=\"not_http2\"} ",
            "automc_syncd_grpc_unauthenticated ",
            "automc_syncd_wakes_total{outcome=\"success\"} ",
            "automc_syncd_wake_duration_seconds_count ",
            "automc_syncd_waker_http_responses_total{status=\"202\"} ",
            "automc_syncd_session_reports_total ",
            "automc_syncd_counts_sent_total ",
            "automc_syncd_session_entries_refused_total ",
            "automc_syncd_fleet_players ",
            "automc_syncd_unknown_edges ",
            "automc_syncd_server_players{server=\"lobby\"} 3",
            "automc_syncd_sleeps_total{outcome=\"stopped\"} ",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
