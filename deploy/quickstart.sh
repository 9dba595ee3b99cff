#!/usr/bin/env bash
# Run automc for real on one machine, no containers: a throwaway Postgres
# cluster, `syncd migrate`, syncd, one edge, a demo Minecraft backend and a
# demo route. Ctrl-C stops everything and removes the cluster.
#
# Ports and paths can be moved with environment variables (defaults shown):
#   EDGE_PORT=25565 SYNCD_GRPC_PORT=50051 SYNCD_HTTP_PORT=9090
#   EDGE_HTTP_PORT=9091 EDGE_GRPC_PORT=50052 PG_PORT=55432 BACKEND_PORT=25566
#   AUTOMC_BIN_DIR=<dir with syncd, edge, automc-demo-backend>  (skips the build)
#   QUICKSTART_DIR=<work dir>  (default: a new temporary directory)
set -euo pipefail

EDGE_PORT="${EDGE_PORT:-25565}"
SYNCD_GRPC_PORT="${SYNCD_GRPC_PORT:-50051}"
SYNCD_HTTP_PORT="${SYNCD_HTTP_PORT:-9090}"
EDGE_HTTP_PORT="${EDGE_HTTP_PORT:-9091}"
EDGE_GRPC_PORT="${EDGE_GRPC_PORT:-50052}"
PG_PORT="${PG_PORT:-55432}"
BACKEND_PORT="${BACKEND_PORT:-25566}"

say() { printf '[quickstart] %s\n' "$*"; }
die() { printf '[quickstart] error: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "$0")/.." && pwd)"

# --- binaries ---------------------------------------------------------------
if [ -n "${AUTOMC_BIN_DIR:-}" ]; then
    bin="$AUTOMC_BIN_DIR"
else
    command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
    say "building syncd, edge and the demo backend (release; the first build takes a few minutes)"
    (cd "$repo" && cargo build --release --quiet -p syncd -p edge -p automc-tests --bin automc-demo-backend)
    bin="$repo/target/release"
fi
for b in syncd edge automc-demo-backend; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
done

# --- Postgres binaries --------------------------------------------------------
pgbin=""
for d in $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ]; then pgbin="$d"; break; fi
done
if [ -z "$pgbin" ] && command -v initdb >/dev/null; then
    pgbin="$(dirname "$(command -v initdb)")"
fi
[ -n "$pgbin" ] || die "Postgres server binaries (initdb, pg_ctl) not found: install the Debian package 'postgresql' (apt-get install postgresql)"

# initdb refuses to run as root: run the cluster as the postgres user then.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user for the cluster (the 'postgresql' package creates it)"
    as_pg=(runuser -u postgres --)
fi

work="${QUICKSTART_DIR:-$(mktemp -d /tmp/automc-quickstart.XXXXXX)}"
mkdir -p "$work"
pgdata="$work/pgdata"
sock="$work/sock"
mkdir -p "$sock"
if [ "${#as_pg[@]}" -gt 0 ]; then chown -R postgres "$work"; fi

pids=()
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -f "$pgdata/postmaster.pid" ]; then
        "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -z "${QUICKSTART_DIR:-}" ]; then rm -rf "$work"; fi
    say "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

say "starting Postgres on 127.0.0.1:$PG_PORT (data in $pgdata)"
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U postgres -A trust --no-sync >"$work/initdb.log" 2>&1 \
    || die "initdb failed, see $work/initdb.log"
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$work/postgres.log" -w \
    -o "-p $PG_PORT -k $sock -c listen_addresses=127.0.0.1" start >/dev/null \
    || die "Postgres did not start, see $work/postgres.log"
"${as_pg[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres automc
dsn="postgres://postgres@127.0.0.1:$PG_PORT/automc"

say "migrating the schema"
"$bin/syncd" migrate --database-url "$dsn"

say "starting the demo backend on 127.0.0.1:$BACKEND_PORT"
"$bin/automc-demo-backend" --listen "127.0.0.1:$BACKEND_PORT" --motd "automc demo backend" \
    >"$work/backend.log" 2>&1 &
pids+=("$!")

say "starting syncd (gRPC 127.0.0.1:$SYNCD_GRPC_PORT, HTTP 127.0.0.1:$SYNCD_HTTP_PORT)"
"$bin/syncd" serve --database-url "$dsn" \
    --grpc-listen "127.0.0.1:$SYNCD_GRPC_PORT" --http-listen "127.0.0.1:$SYNCD_HTTP_PORT" \
    >"$work/syncd.log" 2>&1 &
pids+=("$!")

say "starting edge (players 0.0.0.0:$EDGE_PORT, HTTP 127.0.0.1:$EDGE_HTTP_PORT, gRPC 127.0.0.1:$EDGE_GRPC_PORT)"
"$bin/edge" --listen "0.0.0.0:$EDGE_PORT" --syncd "http://127.0.0.1:$SYNCD_GRPC_PORT" \
    --http-listen "127.0.0.1:$EDGE_HTTP_PORT" --grpc-listen "127.0.0.1:$EDGE_GRPC_PORT" \
    >"$work/edge.log" 2>&1 &
pids+=("$!")

psql_cmd=("$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d automc)
"${psql_cmd[@]}" <<SQL
INSERT INTO servers (name, domain, address, state)
VALUES ('demo', 'localhost', '127.0.0.1:$BACKEND_PORT', 'running')
ON CONFLICT (name) DO UPDATE SET domain = EXCLUDED.domain, address = EXCLUDED.address, state = EXCLUDED.state;
INSERT INTO server_aliases (domain, server) VALUES ('127.0.0.1', 'demo') ON CONFLICT DO NOTHING;
SQL

# GET a path on 127.0.0.1:PORT with bash's /dev/tcp (no curl needed); true on 200.
http_ok() {
    local status
    exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS=' ' read -r _ status _ <&3 || status=""
    exec 3<&- 3>&-
    [ "$status" = "200" ]
}

say "waiting for the edge to hold the demo route"
ready=""
for _ in $(seq 1 150); do
    if http_ok "$EDGE_HTTP_PORT" /readyz; then ready=1; break; fi
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a process exited early; logs are in $work (syncd.log, edge.log, backend.log)"
    done
    sleep 0.2
done
[ -n "$ready" ] || die "edge not ready after 30 s; logs are in $work"

cat <<EOF_INFO

  automc is running.

  Connect:   Minecraft → Multiplayer → Direct Connection → localhost:$EDGE_PORT
             (the demo route 'localhost' and its alias '127.0.0.1' lead to the demo backend)
  Add a route (reaches the edge at once):
    ${psql_cmd[*]} -c \\
      "INSERT INTO servers (name, domain, address, state) VALUES ('survival', 'survival.localhost', '127.0.0.1:25570', 'running');"
  Look inside:
    grpcurl -plaintext 127.0.0.1:$SYNCD_GRPC_PORT automc.v1.RouteSync/ListRoutes
    grpcurl -plaintext 127.0.0.1:$SYNCD_GRPC_PORT automc.v1.RouteSync/ListEdges
    curl -s http://127.0.0.1:$EDGE_HTTP_PORT/metrics
  Logs:      $work/{syncd,edge,backend,postgres}.log

  Press Ctrl-C to stop everything.

EOF_INFO

# Stay up until Ctrl-C or until one of the processes dies.
while true; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a process exited; logs are in $work"
    done
    sleep 1
done
