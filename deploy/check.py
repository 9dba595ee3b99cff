#!/usr/bin/env python3
"""Structural checks of deploy/ that no off-the-shelf linter does. Called by
deploy/check.sh (which runs the real tools); each subcommand prints what it
checked and exits non-zero with a reason on the first class of problems.

    python3 deploy/check.py kustomize-paths        every path a kustomization.yaml lists exists
    python3 deploy/check.py crds RENDERED.yaml     ServiceMonitor/PrometheusRule sanity, cross-refs
    python3 deploy/check.py drain RENDERED.yaml    grace periods longer than the edge drain
    python3 deploy/check.py metrics RULES_OUT      metric names in dashboard and alerts are real;
                                                   writes the dashboard's PromQL as a rule file
                                                   for `promtool check rules`
    python3 deploy/check.py parse                  every YAML/JSON file under deploy/ parses
    python3 deploy/check.py runbooks               every alert's runbook anchor exists in docs/
    python3 deploy/check.py images INSPECT.json    the Kubernetes manifests and compose.yaml use the
                                                   images' names, ports, user and entrypoint as built
                                                   (INSPECT.json: {"automc-edge": <podman image
                                                   inspect>, ...}; tests/tests/containers.rs)
"""

import json
import pathlib
import re
import sys

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
REPO = DEPLOY.parent
sys.path.insert(0, str(DEPLOY / "observability"))
from generate import KNOWN_METRICS  # noqa: E402

HISTOGRAMS = {"automc_syncd_wake_duration_seconds"}


class CheckError(Exception):
    pass


def rel(p):
    return str(pathlib.Path(p).resolve().relative_to(REPO))


def load_all(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


# --- kustomize ---------------------------------------------------------------

def kustomization_paths(k):
    """Every local path a kustomization refers to, with the field it came from."""
    for field in ("resources", "components", "crds", "patchesStrategicMerge", "configurations"):
        for item in k.get(field) or []:
            if isinstance(item, str):
                yield field, item
    for p in k.get("patches") or []:
        if isinstance(p, dict) and "path" in p:
            yield "patches", p["path"]
    for p in k.get("patchesJson6902") or []:
        if isinstance(p, dict) and "path" in p:
            yield "patchesJson6902", p["path"]
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for f in gen.get("files") or []:
            yield "generator files", f.split("=", 1)[-1]
        for f in gen.get("envs") or []:
            yield "generator envs", f
        if gen.get("env"):
            yield "generator env", gen["env"]


def cmd_kustomize_paths():
    files = sorted((DEPLOY / "kubernetes").rglob("kustomization.yaml"))
    if not files:
        raise CheckError("no kustomization.yaml under deploy/kubernetes")
    problems = []
    for kf in files:
        k = yaml.safe_load(kf.read_text())
        n = 0
        for field, path in kustomization_paths(k):
            if "://" in path:
                problems.append(f"{rel(kf)}: {field} entry {path} is remote (offline checks only)")
                continue
            target = (kf.parent / path)
            n += 1
            if not target.exists():
                problems.append(f"{rel(kf)}: {field} entry {path} does not exist")
            elif target.is_dir() and not (target / "kustomization.yaml").exists():
                problems.append(f"{rel(kf)}: {field} entry {path} is a directory without kustomization.yaml")
        # Every manifest next to a kustomization should be listed (or be a patch).
        listed = {(kf.parent / p).resolve() for _, p in kustomization_paths(k)}
        for y in kf.parent.glob("*.yaml"):
            if y.name != "kustomization.yaml" and y.resolve() not in listed:
                problems.append(f"{rel(kf)}: {y.name} sits next to it but is not listed")
        print(f"  {rel(kf)}: {n} paths exist")
    if problems:
        raise CheckError("\n".join(problems))


# --- CRDs (no schema in kubernetes-validate) ----------------------------------

def cmd_crds(rendered):
    docs = load_all(rendered)
    services = [d for d in docs if d.get("kind") == "Service"]
    seen = set()
    for d in docs:
        kind = d.get("kind")
        name = d.get("metadata", {}).get("name")
        if kind == "ServiceMonitor":
            seen.add(kind)
            if d.get("apiVersion") != "monitoring.coreos.com/v1":
                raise CheckError(f"ServiceMonitor {name}: apiVersion {d.get('apiVersion')}")
            spec = d.get("spec") or {}
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not sel:
                raise CheckError(f"ServiceMonitor {name}: spec.selector.matchLabels is empty")
            eps = spec.get("endpoints") or []
            if not eps:
                raise CheckError(f"ServiceMonitor {name}: no endpoints")
            matching = [s for s in services
                        if s["metadata"].get("namespace") == d["metadata"].get("namespace")
                        and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            for ep in eps:
                port = ep.get("port")
                if not port or ep.get("path", "/metrics") != "/metrics":
                    raise CheckError(f"ServiceMonitor {name}: endpoint needs a named port and /metrics")
                owners = [s["metadata"]["name"] for s in matching
                          if any(p.get("name") == port for p in s["spec"].get("ports", []))]
                if not owners:
                    raise CheckError(f"ServiceMonitor {name}: no selected Service has a port named {port}")
                if owners != [name]:
                    raise CheckError(f"ServiceMonitor {name}: scrapes Services {owners}; the alert rules "
                                     f"expect job={name}, i.e. exactly the Service {name}")
            print(f"  ServiceMonitor {name}: selects Service {name}, port {eps[0]['port']}")
        elif kind == "PrometheusRule":
            seen.add(kind)
            alerts = yaml.safe_load((DEPLOY / "observability" / "automc-alerts.yaml").read_text())
            if (d.get("spec") or {}).get("groups") != alerts["groups"]:
                raise CheckError(f"PrometheusRule {name}: groups differ from observability/automc-alerts.yaml "
                                 "(run python3 deploy/observability/generate.py)")
            print(f"  PrometheusRule {name}: same groups as observability/automc-alerts.yaml")
    if seen != {"ServiceMonitor", "PrometheusRule"}:
        raise CheckError(f"expected ServiceMonitor and PrometheusRule in {rendered}, found {sorted(seen)}")


# --- drain / grace periods -----------------------------------------------------

def seconds(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|min)?\s*", str(text))
    if not m:
        raise CheckError(f"cannot read duration {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n / 1000, "s": n, "m": n * 60, "min": n * 60}[unit]


def env_of(container, name):
    for e in container.get("env") or []:
        if e["name"] == name:
            return e.get("value")
    return None


def cmd_drain(rendered):
    # Kubernetes: grace > preStop sleep + drain.
    for d in load_all(rendered):
        if d.get("kind") == "Deployment" and d["metadata"]["name"] == "automc-edge":
            pod = d["spec"]["template"]["spec"]
            c = next(c for c in pod["containers"] if c["name"] == "edge")
            drain = seconds(env_of(c, "EDGE_DRAIN_TIMEOUT"))
            cmd = c["lifecycle"]["preStop"]["exec"]["command"]
            pre = seconds(cmd[-1]) if cmd[0] == "sleep" else 0
            grace = pod["terminationGracePeriodSeconds"]
            if grace <= pre + drain:
                raise CheckError(f"k8s edge: terminationGracePeriodSeconds {grace} <= preStop {pre}s + drain {drain}s")
            print(f"  kubernetes edge: grace {grace}s > preStop {pre}s + drain {drain}s")
            for probe in ("readinessProbe", "livenessProbe"):
                path = c[probe]["httpGet"]["path"]
                want = "/readyz" if probe == "readinessProbe" else "/healthz"
                if path != want:
                    raise CheckError(f"k8s edge: {probe} on {path}, expected {want}")
    # systemd: TimeoutStopSec > EDGE_DRAIN_TIMEOUT from the example env file.
    unit = (DEPLOY / "systemd" / "automc-edge.service").read_text()
    stop = seconds(re.search(r"^TimeoutStopSec=(\S+)", unit, re.M).group(1))
    env = (DEPLOY / "systemd" / "edge.env.example").read_text()
    drain = seconds(re.search(r"^EDGE_DRAIN_TIMEOUT=(\S+)", env, re.M).group(1))
    if stop <= drain:
        raise CheckError(f"systemd edge: TimeoutStopSec {stop}s <= EDGE_DRAIN_TIMEOUT {drain}s")
    print(f"  systemd edge: TimeoutStopSec {stop}s > drain {drain}s")
    # compose: stop_grace_period > EDGE_DRAIN_TIMEOUT.
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    for name in ("edge1", "edge2"):
        svc = compose["services"][name]
        stop = seconds(svc["stop_grace_period"])
        drain = seconds(svc["environment"]["EDGE_DRAIN_TIMEOUT"])
        if stop <= drain:
            raise CheckError(f"compose {name}: stop_grace_period {stop}s <= EDGE_DRAIN_TIMEOUT {drain}s")
    print(f"  compose edges: stop_grace_period {stop}s > drain {drain}s")


# --- metric names --------------------------------------------------------------

METRIC_RE = re.compile(r"\bautomc_[a-z0-9_]+")


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def dashboard_exprs():
    dash = json.loads((DEPLOY / "observability" / "automc-dashboard.json").read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def alert_exprs():
    alerts = yaml.safe_load((DEPLOY / "observability" / "automc-alerts.yaml").read_text())
    for g in alerts["groups"]:
        for r in g["rules"]:
            yield r.get("alert") or r.get("record"), r["expr"]


def cmd_metrics(rules_out):
    known = set(KNOWN_METRICS)
    used = {"dashboard": set(), "alerts": set()}
    for where, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        for title, expr in exprs:
            for m in METRIC_RE.findall(expr):
                b = base_metric(m)
                if b not in known:
                    raise CheckError(f"{where}: '{title}' uses {m}, which no automc process exports")
                used[where].add(b)
    missing = known - used["dashboard"]
    if missing:
        raise CheckError(f"dashboard shows no panel for {sorted(missing)}")
    print(f"  dashboard uses all {len(known)} metrics; alerts use {len(used['alerts'])}; no unknown names")
    # The dashboard's PromQL with Grafana's variables filled in, as recording
    # rules, so promtool parses every expression.
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        e = expr.replace("$__rate_interval", "1m").replace("$edge", ".*")
        rules.append({"record": f"automc:dashboard_panel_{i}", "expr": e})
    pathlib.Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  wrote {len(rules)} dashboard expressions to {rules_out}")


# --- parse everything -----------------------------------------------------------

def cmd_parse():
    n = 0
    for p in sorted(DEPLOY.rglob("*")):
        if p.suffix in (".yaml", ".yml"):
            list(yaml.safe_load_all(p.read_text()))
            n += 1
        elif p.suffix == ".json":
            json.loads(p.read_text())
            n += 1
    print(f"  {n} YAML/JSON files parse")


# --- runbook links ----------------------------------------------------------------

def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md_path):
    text = re.sub(r"^```.*?^```", "", md_path.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def cmd_runbooks():
    n = 0
    for name, rule in ((r.get("alert"), r) for g in yaml.safe_load(
            (DEPLOY / "observability" / "automc-alerts.yaml").read_text())["groups"] for r in g["rules"]):
        link = rule.get("annotations", {}).get("runbook")
        if not link:
            raise CheckError(f"alert {name} has no runbook annotation")
        path, _, anchor = link.partition("#")
        doc = REPO / path
        if not doc.exists():
            raise CheckError(f"alert {name}: runbook {path} does not exist")
        if anchor and anchor not in anchors(doc):
            raise CheckError(f"alert {name}: {path} has no heading for #{anchor}")
        n += 1
    print(f"  {n} alerts link to existing runbook sections")
    # Links between the operations docs: a link to a section must find it.
    # A link to a file that does not exist yet is reported, not failed (some
    # docs are generated elsewhere, e.g. configuration.md from --help).
    docs = [REPO / "deploy" / "README.md"] + [REPO / "docs" / f for f in
                                               ("deploy.md", "operations.md", "troubleshooting.md", "migrating.md")]
    noted = set()
    for doc in docs:
        if not doc.exists():
            continue
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path) if path else doc
            if not dest.exists():
                if (doc, path) not in noted:
                    noted.add((doc, path))
                    print(f"  note: {rel(doc)} links to {path}, which does not exist (yet)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                raise CheckError(f"{rel(doc)}: link {target}: no such section")
    print("  section links in deploy/README.md and docs/{deploy,operations,troubleshooting,migrating}.md resolve")


# --- manifests against the built images ----------------------------------------

def image_repo(ref):
    """`registry/path/automc-edge:tag` -> `automc-edge`."""
    last = ref.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def listen_port(value):
    m = re.fullmatch(r".*:(\d+)", str(value))
    return int(m.group(1)) if m else None


def cmd_images(inspect_json):
    built = json.loads(pathlib.Path(inspect_json).read_text())
    cfg = {}
    for repo, inspect in built.items():
        c = inspect.get("Config") or {}
        ports = {int(p.split("/")[0]) for p in (c.get("ExposedPorts") or {})}
        env = dict(e.split("=", 1) for e in c.get("Env") or [])
        # Docker keeps User and Healthcheck under Config; Podman also at the top.
        health = c.get("Healthcheck") or inspect.get("Healthcheck") or {}
        cfg[repo] = {"ports": ports, "env": env, "user": c.get("User") or inspect.get("User") or "",
                     "entrypoint": c.get("Entrypoint") or [], "cmd": c.get("Cmd") or [],
                     "health": health.get("Test") or []}
        # The image's own *_LISTEN defaults are ports it exposes.
        for k, v in env.items():
            if k.endswith("_LISTEN") and listen_port(v) not in ports:
                raise CheckError(f"image {repo}: {k}={v} but EXPOSE {sorted(ports)}")
        if cfg[repo]["user"].split(":")[0] != "10001":
            raise CheckError(f"image {repo}: USER {cfg[repo]['user']!r}, expected 10001:10001")
    need = {"automc-syncd", "automc-edge", "automc-demo-backend"}
    if set(cfg) != need:
        raise CheckError(f"expected inspect output of {sorted(need)}, got {sorted(cfg)}")
    for repo in ("automc-syncd", "automc-edge"):
        if not cfg[repo]["health"]:
            raise CheckError(f"image {repo}: no HEALTHCHECK (built with the OCI format?)")

    # Kubernetes base: image names, containerPorts, *_LISTEN env, runAsUser,
    # Services' named targetPorts.
    docs = []
    for f in sorted((DEPLOY / "kubernetes" / "base").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs.extend(load_all(f))
    named_ports = {}  # (app label, port name) -> port
    used = set()
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        app = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        uid = (pod.get("securityContext") or {}).get("runAsUser")
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"kubernetes {d['metadata']['name']}/{c['name']}"
            repo = image_repo(c["image"])
            if repo not in cfg:
                raise CheckError(f"{where}: image {c['image']} is none of the built images {sorted(cfg)}")
            used.add(repo)
            img = cfg[repo]
            if uid is not None and str(uid) != img["user"].split(":")[0]:
                raise CheckError(f"{where}: runAsUser {uid}, image USER {img['user']}")
            for p in c.get("ports", []):
                if p["containerPort"] not in img["ports"]:
                    raise CheckError(f"{where}: containerPort {p['containerPort']} not in the image's "
                                     f"EXPOSE {sorted(img['ports'])}")
                named_ports[(app, p["name"])] = p["containerPort"]
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            published = {p["containerPort"] for p in c.get("ports", [])}
            for k, v in env.items():
                if k in img["env"] and listen_port(v) != listen_port(img["env"][k]):
                    raise CheckError(f"{where}: {k}={v}, the image's default is {img['env'][k]}")
                if k.endswith("_LISTEN") and v and not v.startswith("127.0.0.1:") \
                        and listen_port(v) not in published:
                    raise CheckError(f"{where}: {k}={v} but containerPorts {sorted(published)}")
            if c.get("command"):
                raise CheckError(f"{where}: `command` replaces the image's ENTRYPOINT {img['entrypoint']}; "
                                 "use `args`")
        print(f"  kubernetes {d['metadata']['name']}: images, ports and user match the built images")
    for d in docs:
        if d.get("kind") != "Service":
            continue
        app = d["spec"]["selector"].get("app.kubernetes.io/name")
        for p in d["spec"]["ports"]:
            t = p.get("targetPort")
            if isinstance(t, str) and (app, t) not in named_ports:
                raise CheckError(f"Service {d['metadata']['name']}: targetPort {t} names no port of {app}")
    if used != {"automc-syncd", "automc-edge"}:
        raise CheckError(f"kubernetes base uses images {sorted(used)}")
    for kf in sorted((DEPLOY / "kubernetes" / "overlays").rglob("kustomization.yaml")):
        for i in yaml.safe_load(kf.read_text()).get("images") or []:
            if i["name"] not in used:
                raise CheckError(f"{rel(kf)}: images entry {i['name']} matches no image of the base")
    print("  kubernetes Services: named targetPorts exist; overlays' images entries match the base")

    # compose.yaml and haproxy.cfg.
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        repo = image_repo(svc.get("image", ""))
        if not repo.startswith("automc-"):
            continue
        if repo not in cfg:
            raise CheckError(f"compose {name}: image {svc['image']} is none of the built images")
        img = cfg[repo]
        target = (svc.get("build") or {}).get("target")
        if target and f"automc-{target}" != repo:
            raise CheckError(f"compose {name}: builds target {target} but is tagged {svc['image']}")
        env = svc.get("environment") or {}
        # Ports the container listens on: the image's, and any the service
        # moves or adds with a *_LISTEN variable (the edges' EdgeAdmin).
        listening = set(img["ports"])
        for k, v in env.items():
            if k in img["env"] and listen_port(v) != listen_port(img["env"][k]):
                raise CheckError(f"compose {name}: {k}={v}, the image's default is {img['env'][k]}")
            if k.endswith("_LISTEN") and listen_port(v) is not None:
                listening.add(listen_port(v))
        for p in svc.get("ports", []):
            inner = int(str(p).rsplit(":", 1)[-1].split("/")[0])
            if inner not in listening:
                raise CheckError(f"compose {name}: publishes {p}, the container listens on {sorted(listening)}")
        args = svc.get("command") or img["cmd"]
        if "--listen" in args and listen_port(args[args.index("--listen") + 1]) not in img["ports"]:
            raise CheckError(f"compose {name}: --listen {args[args.index('--listen') + 1]}, "
                             f"the image exposes {sorted(img['ports'])}")
    edge_ports = cfg["automc-edge"]["ports"]
    hap = (DEPLOY / "docker" / "haproxy.cfg").read_text()
    for m in re.finditer(r"^\s*server\s+\S+\s+\S+:(\d+)", hap, re.M):
        if int(m.group(1)) not in edge_ports:
            raise CheckError(f"haproxy.cfg: server port {m.group(1)}, the edge image exposes {sorted(edge_ports)}")
    for m in re.finditer(r"\bcheck port (\d+)", hap):
        if int(m.group(1)) not in edge_ports:
            raise CheckError(f"haproxy.cfg: health check port {m.group(1)}, the edge exposes {sorted(edge_ports)}")
    seed = " ".join(compose["services"]["seed"]["command"])
    for m in re.finditer(r"'demo-backend:(\d+)'", seed):
        if int(m.group(1)) not in cfg["automc-demo-backend"]["ports"]:
            raise CheckError(f"compose seed: route to demo-backend:{m.group(1)}, the image exposes "
                             f"{sorted(cfg['automc-demo-backend']['ports'])}")
    print("  compose.yaml, haproxy.cfg: images, ports and the demo route match the built images")


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    fn = {"kustomize-paths": cmd_kustomize_paths, "crds": cmd_crds, "drain": cmd_drain,
          "metrics": cmd_metrics, "parse": cmd_parse, "runbooks": cmd_runbooks,
          "images": cmd_images}.get(cmd)
    if fn is None:
        print(f"unknown check {cmd}\n{__doc__}", file=sys.stderr)
        return 2
    try:
        fn(*args)
    except CheckError as e:
        print(f"FAIL ({cmd}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
