# Stand-in for the official haproxy image in deploy/docker/compose.yaml, made
# from Debian's haproxy package on the local base (no image registry in CI):
# same config path (/usr/local/etc/haproxy/haproxy.cfg, mounted by compose),
# same unprivileged user, master-worker in the foreground.
# Built and cached by tests/src/containers.rs (fixture_image).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && install -d /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
