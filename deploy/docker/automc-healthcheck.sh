#!/usr/bin/env bash
# Container HEALTHCHECK for automc images without curl or wget.
#
#   automc-healthcheck ENV_VAR_OR_ADDR [PATH]
#
# The first argument is either the name of the environment variable holding the
# HTTP admin listen address (SYNCD_HTTP_LISTEN, EDGE_HTTP_LISTEN) or an address
# itself (`0.0.0.0:9090`, `[::]:9090`, `9090`). Only the port is used: the check
# always connects to 127.0.0.1 inside the container. PATH defaults to /readyz.
# Exit 0 when the answer's status line is 200, 1 otherwise (what Docker expects).
#
# It speaks HTTP/1.0 over bash's /dev/tcp, so the image needs nothing but bash.
set -euo pipefail

target="${1:?usage: automc-healthcheck ENV_VAR_OR_ADDR [PATH]}"
path="${2:-/readyz}"

if [[ "$target" =~ ^[A-Z_][A-Z0-9_]*$ ]]; then
  addr="${!target:-}"
  if [[ -z "$addr" ]]; then
    echo "automc-healthcheck: \$$target is not set" >&2
    exit 1
  fi
else
  addr="$target"
fi
port="${addr##*:}"
if [[ ! "$port" =~ ^[0-9]+$ ]]; then
  echo "automc-healthcheck: no port in '$addr'" >&2
  exit 1
fi

exec 3<>"/dev/tcp/127.0.0.1/$port" || {
  echo "automc-healthcheck: cannot connect to 127.0.0.1:$port" >&2
  exit 1
}
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
status_line=""
IFS= read -r -t 2 status_line <&3 || true
# Read the (tiny) rest of the answer so the server sees an orderly close.
while IFS= read -r -t 2 _ <&3; do :; done
exec 3<&-
status_line="${status_line%$'\r'}"
case "$status_line" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *)
    echo "automc-healthcheck: GET $path on :$port answered '${status_line:-nothing}'" >&2
    exit 1
    ;;
esac
