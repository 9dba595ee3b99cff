//! The database side of syncd: the idempotent migration (`syncd migrate`),
//! detection of the schema a database actually
//! has (an original automc database may lack `enabled` and the alias table),
//! and the query that reads routes for that schema.
//!
//! Notification payloads: the original automc trigger sends an empty payload,
//! which means "something changed, re-read everything". Our migration's
//! trigger sends `server:<name>` so syncd re-reads only that server's rows;
//! anything it does not recognise falls back to a full re-read.

use tokio_postgres::{Client, Row};

use crate::diff::ServerRow;

/// Notification channel shared with the original automc trigger.
pub const CHANNEL: &str = "automc_routes_changed";

/// Wake phases announced by the active syncd so standbys relay them to
/// their edges (see `wake::relay_payload`).
pub const WAKE_CHANNEL: &str = "automc_wakes";

/// Prefix of a rich payload: `server:<name>`.
pub const PAYLOAD_SERVER_PREFIX: &str = "server:";

/// Idempotent: safe on an empty database, on an original automc database and
/// on one already migrated. Never rewrites existing rows.
pub const MIGRATE_SQL: &str = r#"
SELECT pg_advisory_xact_lock(7411533264952);

CREATE TABLE IF NOT EXISTS servers (
    name    TEXT PRIMARY KEY,
    domain  TEXT UNIQUE,
    address TEXT NOT NULL,
    state   TEXT NOT NULL DEFAULT 'stopped',
    enabled BOOLEAN NOT NULL DEFAULT true
);
ALTER TABLE servers ADD COLUMN IF NOT EXISTS state TEXT NOT NULL DEFAULT 'stopped';
ALTER TABLE servers ADD COLUMN IF NOT EXISTS enabled BOOLEAN NOT NULL DEFAULT true;
-- The original schema had domain NOT NULL; a NULL domain now means "no
-- primary hostname" (the server may still have aliases).
ALTER TABLE servers ALTER COLUMN domain DROP NOT NULL;

CREATE TABLE IF NOT EXISTS server_aliases (
    domain TEXT PRIMARY KEY,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX IF NOT EXISTS server_aliases_server_idx ON server_aliases (server);

-- One notification per changed server; identical payloads in a transaction
-- collapse into one. Names too long for a NOTIFY payload fall back to the
-- empty payload (full re-read).
CREATE OR REPLACE FUNCTION automc_notify_server(server_name TEXT) RETURNS void AS $$
BEGIN
    IF octet_length(server_name) <= 7000 THEN
        PERFORM pg_notify('automc_routes_changed', 'server:' || server_name);
    ELSE
        PERFORM pg_notify('automc_routes_changed', '');
    END IF;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION automc_notify_routes_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('automc_routes_changed', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM automc_notify_server(OLD.name);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM automc_notify_server(NEW.name);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS automc_servers_route_notify ON servers;
CREATE TRIGGER automc_servers_route_notify
    AFTER INSERT OR UPDATE OF name, domain, address, state, enabled OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed();
DROP TRIGGER IF EXISTS automc_servers_truncate_notify ON servers;
CREATE TRIGGER automc_servers_truncate_notify
    AFTER TRUNCATE ON servers
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_routes_changed();

CREATE OR REPLACE FUNCTION automc_notify_alias_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('automc_routes_changed', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM automc_notify_server(OLD.server);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM automc_notify_server(NEW.server);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS automc_server_aliases_notify ON server_aliases;
CREATE TRIGGER automc_server_aliases_notify
    AFTER INSERT OR UPDATE OR DELETE ON server_aliases
    FOR EACH ROW EXECUTE FUNCTION automc_notify_alias_changed();
DROP TRIGGER IF EXISTS automc_server_aliases_truncate_notify ON server_aliases;
CREATE TRIGGER automc_server_aliases_truncate_notify
    AFTER TRUNCATE ON server_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_alias_changed();

-- Per-server options; NULL means the global default. Only sleep_after is
-- read so far (idle time before syncd asks the waker to stop the server).
CREATE TABLE IF NOT EXISTS server_options (
    server TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE ON UPDATE CASCADE
);
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS sleep_after INTERVAL;
DROP TRIGGER IF EXISTS automc_server_options_notify ON server_options;
CREATE TRIGGER automc_server_options_notify
    AFTER INSERT OR UPDATE OR DELETE ON server_options
    FOR EACH ROW EXECUTE FUNCTION automc_notify_alias_changed();
DROP TRIGGER IF EXISTS automc_server_options_truncate_notify ON server_options;
CREATE TRIGGER automc_server_options_truncate_notify
    AFTER TRUNCATE ON server_options
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_alias_changed();
"#;

/// Per-server `sleep_after` overrides (rows with a value), in seconds; an
/// error when the database has no `server_options.sleep_after` (an
/// original automc schema: no overrides).
pub const SLEEP_OPTIONS_SQL: &str = "SELECT server, EXTRACT(EPOCH FROM sleep_after)::float8 \
     FROM server_options WHERE sleep_after IS NOT NULL";

/// Whether the database has `server_options.sleep_after`.
pub async fn has_sleep_options(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('server_options')
                              AND attname = 'sleep_after' AND NOT attisdropped)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Apply [`MIGRATE_SQL`] in one transaction.
pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(MIGRATE_SQL).await?;
    tx.commit().await
}

/// What `syncd migrate` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub before: Shape,
    pub after: Shape,
    /// Postgres NOTICE lines raised by the migration (idempotent `IF NOT
    /// EXISTS` steps say "skipping").
    pub notices: Vec<String>,
}

impl MigrateReport {
    /// One line: what changed, or that nothing needed to.
    pub fn summary(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        let mut done = Vec::new();
        if !b.has_servers && a.has_servers {
            done.push("created table servers".to_owned());
        } else {
            if !b.has_state && a.has_state {
                done.push("added column servers.state".to_owned());
            }
            if !b.has_enabled && a.has_enabled {
                done.push("added column servers.enabled".to_owned());
            }
        }
        if !b.has_aliases && a.has_aliases {
            done.push("created table server_aliases".to_owned());
        }
        if done.is_empty() {
            "schema already current; notify triggers refreshed".to_owned()
        } else {
            format!("{}; notify triggers installed", done.join(", "))
        }
    }
}

/// What the connected database has; decides the read query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub has_servers: bool,
    pub has_enabled: bool,
    pub has_state: bool,
    pub has_aliases: bool,
}

/// Look at the database's tables and columns.
pub async fn detect(client: &Client) -> Result<Shape, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('servers') IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('servers') AND attname = 'enabled'
                              AND NOT attisdropped),
                    EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('servers') AND attname = 'state'
                              AND NOT attisdropped),
                    to_regclass('server_aliases') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(Shape {
        has_servers: row.get(0),
        has_enabled: row.get(1),
        has_state: row.get(2),
        has_aliases: row.get(3),
    })
}

impl Shape {
    /// Everything `syncd migrate` creates is there.
    pub fn is_current(&self) -> bool {
        self.has_servers && self.has_enabled && self.has_state && self.has_aliases
    }

    /// `SELECT` of every server row (`only_names = false`) or of the servers
    /// named in `$1::text[]`.
    pub fn read_query(&self, only_names: bool) -> String {
        let state = if self.has_state {
            "s.state::text"
        } else {
            "''::text"
        };
        let enabled = if self.has_enabled {
            "s.enabled"
        } else {
            "NULL::boolean"
        };
        let aliases = if self.has_aliases {
            "ARRAY(SELECT a.domain::text FROM server_aliases a \
             WHERE a.server = s.name ORDER BY a.domain)"
        } else {
            "'{}'::text[]"
        };
        let filter = if only_names {
            " WHERE s.name = ANY($1::text[])"
        } else {
            ""
        };
        format!(
            "SELECT s.name::text, s.domain::text, s.address::text, {state}, {enabled}, {aliases} \
             FROM servers s{filter}"
        )
    }
}

/// Decode a row of [`Shape::read_query`].
pub fn server_row(row: &Row) -> Result<ServerRow, tokio_postgres::Error> {
    Ok(ServerRow {
        name: row.try_get(0)?,
        domain: row.try_get(1)?,
        address: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        state: row.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
        enabled: row.try_get(4)?,
        aliases: row
            .try_get::<_, Option<Vec<Option<String>>>>(5)?
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect(),
    })
}

/// What a notification payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Re-read this server's rows only.
    Server(String),
    /// Unknown or empty payload: re-read everything.
    Everything,
}

pub fn parse_payload(payload: &str) -> Payload {
    match payload.strip_prefix(PAYLOAD_SERVER_PREFIX) {
        Some(name) => Payload::Server(name.to_owned()),
        None => Payload::Everything,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_server_or_ask_for_everything() {
        let cases = [
            ("", Payload::Everything),
            ("server:lobby", Payload::Server("lobby".into())),
            ("server:", Payload::Server(String::new())),
            ("something else", Payload::Everything),
        ];
        for (input, want) in cases {
            assert_eq!(parse_payload(input), want, "{input:?}");
        }
    }

    #[test]
    fn migrate_summary_says_what_changed_or_that_nothing_had_to() {
        let none = Shape {
            has_servers: false,
            has_enabled: false,
            has_state: false,
            has_aliases: false,
        };
        let current = Shape {
            has_servers: true,
            has_enabled: true,
            has_state: true,
            has_aliases: true,
        };
        let original = Shape {
            has_servers: true,
            has_state: true,
            ..none
        };
        let report = |before, after| MigrateReport {
            before,
            after,
            notices: vec![],
        };
        assert_eq!(
            report(none, current).summary(),
            "created table servers, created table server_aliases; notify triggers installed"
        );
        assert_eq!(
            report(original, current).summary(),
            "added column servers.enabled, created table server_aliases; notify triggers installed"
        );
        assert_eq!(
            report(current, current).summary(),
            "schema already current; notify triggers refreshed"
        );
    }

    #[test]
    fn read_query_adapts_to_the_original_schema() {
        let old = Shape {
            has_servers: true,
            has_enabled: false,
            has_state: true,
            has_aliases: false,
        };
        let q = old.read_query(false);
        assert!(
            !q.contains("s.enabled") && !q.contains("server_aliases"),
            "{q}"
        );
        let new = Shape {
            has_enabled: true,
            has_aliases: true,
            ..old
        };
        let q = new.read_query(true);
        assert!(q.contains("s.enabled") && q.contains("server_aliases") && q.contains("$1"));
    }
}
