# Stand-in for the official postgres image in deploy/docker/compose.yaml, made
# from Debian's postgresql package on the local base (no image registry in
# CI). It honours what compose.yaml relies on: POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB create the role and database on first start, the data lives
# in /var/lib/postgresql/data, password (scram) logins over the network,
# pg_isready and psql on PATH, other commands run as given (the `seed` service).
# Built and cached by tests/src/containers.rs (fixture_image).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
