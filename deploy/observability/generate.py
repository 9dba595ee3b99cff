#!/usr/bin/env python3
"""Generates the derived observability files:

- automc-dashboard.json (Grafana), from the panel list in build() below;
- ../kubernetes/components/monitoring/prometheusrule.yaml, the alert groups of
  automc-alerts.yaml wrapped in a Prometheus Operator PrometheusRule.

    python3 deploy/observability/generate.py          # rewrite both
    python3 deploy/observability/generate.py --check  # exit 1 if either is out of date

Both outputs are committed so they can be used as they are; this script and
automc-alerts.yaml are the sources. Every metric name used must be one the
processes export (KNOWN_METRICS, kept equal to TEAM.md); deploy/check.sh
enforces that both ways, for the dashboard and for the alert rules.
"""

import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "automc-dashboard.json"
ALERTS = HERE / "automc-alerts.yaml"
RULE_OUT = HERE.parent / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

# Exported metric names (counters with their `_total` suffix, histograms by
# base name). Keep in sync with TEAM.md "Metric names".
KNOWN_METRICS = [
    "automc_syncd_routes",
    "automc_syncd_table_version",
    "automc_syncd_notifications_total",
    "automc_syncd_reloads_total",
    "automc_syncd_pg_reconnects_total",
    "automc_syncd_pg_connected",
    "automc_syncd_watchers",
    "automc_syncd_watchers_cut_total",
    "automc_syncd_watcher_lag_max",
    "automc_syncd_wakes_total",
    "automc_syncd_wake_duration_seconds",
    "automc_syncd_waker_http_responses_total",
    "automc_syncd_grpc_connections",
    "automc_syncd_grpc_handshakes",
    "automc_syncd_grpc_connections_refused_total",
    "automc_syncd_grpc_unauthenticated",
    "automc_edge_connections_total",
    "automc_edge_connections_active",
    "automc_edge_bytes_total",
    "automc_edge_handshake_errors_total",
    "automc_edge_route_lookups_total",
    "automc_edge_sync_connected",
    "automc_edge_table_version",
    "automc_edge_table_age_seconds",
    "automc_edge_held_logins",
    "automc_edge_wakes_total",
    "automc_edge_refused_total",
]

DS = {"type": "prometheus", "uid": "${datasource}"}
EDGE = 'job="automc-edge", instance=~"$edge"'
SYNCD = 'job="automc-syncd"'
RI = "$__rate_interval"


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append(
            {"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
             "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}}
        )
        self.y += 1

    def stat(self, title, expr, unit="short", w=4, h=4, description="", mappings=None, thresholds=None):
        self.panels.append({
            "type": "stat", "title": title, "id": self._id(), "datasource": DS,
            "description": description,
            "gridPos": self._place(w, h),
            "targets": [target(expr, "", "A")],
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "value"},
            "fieldConfig": {"defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": thresholds or {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            }, "overrides": []},
        })

    def series(self, title, targets, unit="short", w=12, h=8, description="", stack=False):
        self.panels.append({
            "type": "timeseries", "title": title, "id": self._id(), "datasource": DS,
            "description": description,
            "gridPos": self._place(w, h),
            "targets": [target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(targets)],
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "fieldConfig": {"defaults": {
                "unit": unit,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                           "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                           "showPoints": "never"},
            }, "overrides": []},
        })


UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                          "1": {"text": "UP", "color": "green"}}}]
RED_BELOW_1 = {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}


def build():
    d = Layout()

    d.row("Overview")
    d.stat("syncd", f"max(up{{{SYNCD}}})", mappings=UP_DOWN, thresholds=RED_BELOW_1,
           description="Is syncd answering scrapes.")
    d.stat("Postgres (syncd LISTEN)", f"min(automc_syncd_pg_connected{{{SYNCD}}})",
           mappings=UP_DOWN, thresholds=RED_BELOW_1,
           description="syncd's LISTEN connection. While down, syncd serves the routes it holds.")
    d.stat("Routes", f"sum(automc_syncd_routes{{{SYNCD}}})")
    d.stat("Edges watching", f"sum(automc_syncd_watchers{{{SYNCD}}})",
           description="Edges holding a live route stream from syncd.")
    d.stat("Edges synced", f'sum(automc_edge_sync_connected{{{EDGE}}}) or vector(0)',
           description="Edges reporting a connected route stream.")
    d.stat("Players connected", f"sum(automc_edge_connections_active{{{EDGE}}})")

    d.row("syncd: route sync")
    d.series("Routes", [(f"automc_syncd_routes{{{SYNCD}}}", "{{instance}}")])
    d.series("Table version per process", [
        (f"automc_syncd_table_version{{{SYNCD}}}", "syncd {{instance}}"),
        (f"automc_edge_table_version{{{EDGE}}}", "edge {{instance}}"),
    ], description="Edges should sit on syncd's line. A version only means something within one epoch: "
                   "it starts over when syncd restarts.")
    d.series("Watchers and lag", [
        (f"automc_syncd_watchers{{{SYNCD}}}", "watchers"),
        (f"automc_syncd_watcher_lag_max{{{SYNCD}}}", "max lag (versions)"),
    ], description="Lag: syncd's version minus the lowest version an edge acknowledged.")
    d.series("Postgres events", [
        (f"rate(automc_syncd_notifications_total{{{SYNCD}}}[{RI}])", "notifications/s"),
        (f"rate(automc_syncd_reloads_total{{{SYNCD}}}[{RI}])", "re-reads/s"),
        (f"rate(automc_syncd_pg_reconnects_total{{{SYNCD}}}[{RI}])", "reconnects/s"),
        (f"rate(automc_syncd_watchers_cut_total{{{SYNCD}}}[{RI}])", "slow watchers cut/s"),
    ], unit="ops", description="Many notifications, few re-reads: coalescing at work.")
    d.series("Postgres connected", [(f"automc_syncd_pg_connected{{{SYNCD}}}", "{{instance}}")], w=24, h=5)

    d.row("syncd: gRPC port")
    d.stat("gRPC authentication", f"max(automc_syncd_grpc_unauthenticated{{{SYNCD}}})",
           mappings=[{"type": "value", "options": {"0": {"text": "REQUIRED", "color": "green"},
                                                   "1": {"text": "OPEN", "color": "red"}}}],
           description="OPEN: syncd serves RouteSync on a reachable address without a token or mutual "
                       "TLS (--allow-unauthenticated).")
    d.series("gRPC connections", [
        (f"automc_syncd_grpc_connections{{{SYNCD}}}", "open"),
        (f"automc_syncd_grpc_handshakes{{{SYNCD}}}", "in handshake"),
    ], w=8, description="Connections to syncd's gRPC port, and those not past TLS and the HTTP/2 preface yet.")
    d.series("gRPC connections refused by reason", [
        (f"sum by (reason) (rate(automc_syncd_grpc_connections_refused_total{{{SYNCD}}}[{RI}]))", "{{reason}}"),
    ], unit="ops", stack=True,
        description="Refused at accept (connection and handshake caps) or cut during the handshake (deadline, "
                    "not HTTP/2, TLS failure).")

    d.row("Edges: traffic")
    d.series("Connections by outcome", [
        (f"sum by (outcome) (rate(automc_edge_connections_total{{{EDGE}}}[{RI}]))", "{{outcome}}"),
    ], unit="cps", stack=True)
    d.series("Active connections per edge", [
        (f"automc_edge_connections_active{{{EDGE}}}", "{{instance}}"),
    ], stack=True)
    d.series("Bytes", [
        (f"sum by (direction) (rate(automc_edge_bytes_total{{{EDGE}}}[{RI}]))", "{{direction}}"),
    ], unit="Bps", description="downstream = towards players, upstream = towards backends.")
    d.series("Route lookups", [
        (f"sum by (result) (rate(automc_edge_route_lookups_total{{{EDGE}}}[{RI}]))", "{{result}}"),
    ], unit="ops", stack=True, description="miss = a hostname no route matches (typos, scanners, old DNS).")
    d.series("Handshake errors by reason", [
        (f"sum by (reason) (rate(automc_edge_handshake_errors_total{{{EDGE}}}[{RI}]))", "{{reason}}"),
    ], unit="ops", stack=True)
    d.series("Refused connections by reason", [
        (f"sum by (reason) (rate(automc_edge_refused_total{{{EDGE}}}[{RI}]))", "{{reason}}"),
    ], unit="ops", stack=True, description="Admission limits: total, per source address, connection rate.")

    d.row("Edges: sync state")
    d.series("Route table age", [
        (f"automc_edge_table_age_seconds{{{EDGE}}}", "{{instance}}"),
    ], unit="s", description="Time since the table last changed or a heartbeat confirmed it. "
                             "Grows while the edge has no stream from syncd.")
    d.series("Route stream connected", [
        (f"automc_edge_sync_connected{{{EDGE}}}", "{{instance}}"),
    ])

    d.row("Wakes")
    d.series("Wakes by outcome (syncd)", [
        (f"sum by (outcome) (increase(automc_syncd_wakes_total{{{SYNCD}}}[{RI}]))", "{{outcome}}"),
    ], stack=True, description="One wake per server, however many players and edges asked.")
    d.series("Wake duration (syncd)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(automc_syncd_wake_duration_seconds_bucket{{{SYNCD}}}[{RI}])))", "p50"),
        (f"histogram_quantile(0.9, sum by (le) (rate(automc_syncd_wake_duration_seconds_bucket{{{SYNCD}}}[{RI}])))", "p90"),
        (f"histogram_quantile(0.99, sum by (le) (rate(automc_syncd_wake_duration_seconds_bucket{{{SYNCD}}}[{RI}])))", "p99"),
        (f"sum(rate(automc_syncd_wake_duration_seconds_sum{{{SYNCD}}}[{RI}])) / sum(rate(automc_syncd_wake_duration_seconds_count{{{SYNCD}}}[{RI}]))", "mean"),
    ], unit="s")
    d.series("Waker HTTP responses", [
        (f"sum by (status) (rate(automc_syncd_waker_http_responses_total{{{SYNCD}}}[{RI}]))", "{{status}}"),
    ], unit="ops", stack=True)
    d.series("Held logins", [
        (f"automc_edge_held_logins{{{EDGE}}}", "{{instance}}"),
    ], stack=True, description="Players held on an edge while their server wakes.")
    d.series("Wakes by outcome (edges)", [
        (f"sum by (outcome) (increase(automc_edge_wakes_total{{{EDGE}}}[{RI}]))", "{{outcome}}"),
    ], w=24, stack=True, description="Held logins by how they ended.")

    return {
        "__inputs": [],
        "title": "automc",
        "uid": "automc-overview",
        "description": "automc router: syncd route sync, edges, wakes. Source: deploy/observability/dashboard.py",
        "tags": ["automc", "minecraft"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "options": []},
            {"name": "edge", "label": "Edge", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(automc_edge_connections_active{job="automc-edge"}, instance)',
                       "refId": "edge"},
             "definition": 'label_values(automc_edge_connections_active{job="automc-edge"}, instance)',
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2,
             "sort": 1, "hide": 0, "options": []},
        ]},
        "panels": d.panels,
    }


def render_dashboard():
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def render_prometheusrule():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "automc", "labels": {"app.kubernetes.io/part-of": "automc"}},
        "spec": {"groups": groups},
    }
    header = (
        "# GENERATED by deploy/observability/generate.py from\n"
        "# deploy/observability/automc-alerts.yaml: edit that file, then re-run the script.\n"
        "# kube-prometheus-stack selects PrometheusRules by its ruleSelector (by default\n"
        "# `release: <helm release name>`): add that label in your overlay if needed.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


def main():
    outputs = {OUT: render_dashboard(), RULE_OUT: render_prometheusrule()}
    if "--check" in sys.argv[1:]:
        stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} is out of date: run python3 deploy/observability/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in outputs.items():
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
