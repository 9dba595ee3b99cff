#!/usr/bin/env bash
# The images' runtime base (what debian:bookworm-slim is from a registry),
# made from Debian's own packages, for machines that reach Debian's package
# mirrors but no image registry (CI here, air-gapped build hosts).
#
#   bash deploy/docker/debian-base.sh [IMAGE] [CACHE_DIR]
#   podman build --format docker --build-arg BASE_IMAGE=IMAGE -f deploy/docker/Dockerfile --target edge-prebuilt .
#
# IMAGE defaults to localhost/debian:bookworm-slim, CACHE_DIR to target/containers
# of this repository. debootstrap (--variant=minbase) writes a root file system
# once; its tarball is kept in CACHE_DIR, so a rerun only imports it (or does
# nothing when IMAGE exists already). The apt sources are the ones the official
# image has (bookworm, bookworm-updates, bookworm-security), so the Dockerfile's
# pinned packages install the same way on both bases.
#
# Needs root (debootstrap, rootful podman), debootstrap and podman:
#   apt-get install --no-install-recommends debootstrap podman runc
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian),
# DEBIAN_SECURITY_MIRROR the security one (default: the same host, /debian-security).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${1:-localhost/debian:bookworm-slim}"
cache="${2:-$repo/target/containers}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"
suite=bookworm
# One tarball per image name (a new name, e.g. one carrying a version, makes a new one).
tarball="$cache/$(printf '%s' "$image" | tr -c 'A-Za-z0-9._-' '_').tar"

say() { printf '[debian-base] %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "debian-base.sh: run as root (debootstrap and rootful podman)" >&2; exit 1; }
for tool in debootstrap podman flock; do
  command -v "$tool" >/dev/null 2>&1 || { echo "debian-base.sh: $tool not found" >&2; exit 1; }
done

mkdir -p "$cache"
# One builder at a time; the others wait and then find the image.
exec 9>"$cache/.debian-base.lock"
flock 9

if podman image exists "$image"; then
  exit 0
fi

if [ ! -s "$tarball" ]; then
  rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap --variant=minbase $suite from $mirror (once; cached in $tarball)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2
    echo "debian-base.sh: debootstrap failed (full log: $cache/debootstrap.log)" >&2
    exit 1
  }
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # Like the official slim image: apt keeps no caches, fetches no
  # translations, dpkg installs no documentation, man pages or locales (and
  # the ones debootstrap unpacked go), no package lists.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/linda/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

say "podman import $tarball as $image"
podman import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
