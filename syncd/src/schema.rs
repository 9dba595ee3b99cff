//! The database side of syncd: the idempotent migration (`syncd migrate`),
//! the diagnosis (`syncd check`), detection of the schema a database actually
//! has (an original automc database may lack `enabled` and the alias table),
//! and the query that reads routes for that schema.
//!
//! Notification payloads: the original automc trigger sends an empty payload,
//! which means "something changed, re-read everything". Our migration's
//! trigger sends `server:<name>` so syncd re-reads only that server's rows;
//! anything it does not recognise falls back to a full re-read.
use std::fmt;

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

pub use crate::dsn::redact as redact_dsn;

/// One finding of `syncd check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Error => "ERROR",
        };
        write!(f, "{tag} {}", self.text)
    }
}

fn finding(level: Level, text: impl Into<String>) -> Finding {
    Finding {
        level,
        text: text.into(),
    }
}

/// Diagnose the database: table, columns, triggers and their columns,
/// payload kind, route count.
pub async fn check(client: &Client) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let shape = detect(client).await?;
    if !shape.has_servers {
        out.push(finding(
            Level::Error,
            "table `servers` not found: run `syncd migrate`",
        ));
        return Ok(out);
    }
    out.push(finding(Level::Ok, "table `servers` present"));
    if !shape.has_state {
        out.push(finding(
            Level::Warn,
            "column `servers.state` missing: wakes cannot end early on state=running; run `syncd migrate`",
        ));
    }
    if shape.has_enabled {
        out.push(finding(Level::Ok, "column `servers.enabled` present"));
    } else {
        out.push(finding(
            Level::Warn,
            "column `servers.enabled` missing (original automc schema): every row counts as enabled; \
             `syncd migrate` adds it",
        ));
    }
    check_servers_trigger(client, shape, &mut out).await?;
    if shape.has_aliases {
        out.push(finding(Level::Ok, "alias table `server_aliases` present"));
        let triggers = triggers_on(client, "server_aliases").await?;
        if triggers
            .iter()
            .any(|t| t.on_insert && t.on_delete && t.on_update)
        {
            out.push(finding(Level::Ok, "alias trigger present"));
        } else {
            out.push(finding(
                Level::Error,
                "no notify trigger on `server_aliases`: alias changes are not seen; run `syncd migrate`",
            ));
        }
    } else {
        out.push(finding(
            Level::Warn,
            "alias table `server_aliases` missing: no extra hostnames; `syncd migrate` creates it",
        ));
    }
    let rows = client.query(&shape.read_query(false), &[]).await?;
    let mut server_rows = Vec::with_capacity(rows.len());
    for r in &rows {
        server_rows.push(server_row(r)?);
    }
    let routes = crate::diff::routes_from_rows(server_rows);
    out.push(finding(
        Level::Ok,
        format!(
            "{} server rows, {} of them routes (enabled, with a hostname and an address)",
            rows.len(),
            routes.len()
        ),
    ));
    Ok(out)
}

struct TriggerInfo {
    name: String,
    function: String,
    on_insert: bool,
    on_delete: bool,
    on_update: bool,
    /// Columns of `UPDATE OF`; empty means every column.
    update_columns: Vec<String>,
    rich_payload: bool,
}

async fn triggers_on(
    client: &Client,
    table: &str,
) -> Result<Vec<TriggerInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT t.tgname::text, p.proname::text, t.tgtype::int4,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = t.tgrelid AND a.attnum = ANY(t.tgattr)
                          ORDER BY a.attname),
                    p.prosrc
             FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal
               AND (p.prosrc LIKE '%automc_routes_changed%'
                    OR p.prosrc LIKE '%automc_notify_server%')
             ORDER BY t.tgname",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tgtype: i32 = r.get(2);
            let src: String = r.get(4);
            TriggerInfo {
                name: r.get(0),
                function: r.get(1),
                on_insert: tgtype & 4 != 0,
                on_delete: tgtype & 8 != 0,
                on_update: tgtype & 16 != 0,
                update_columns: r.get(3),
                rich_payload: src.contains("automc_notify_server"),
            }
        })
        .collect())
}

async fn check_servers_trigger(
    client: &Client,
    shape: Shape,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let triggers = triggers_on(client, "servers").await?;
    let Some(t) = triggers
        .iter()
        .find(|t| t.on_insert || t.on_update || t.on_delete)
    else {
        out.push(finding(
            Level::Error,
            "no trigger on `servers` notifies automc_routes_changed: changes are only seen on reconnect; \
             run `syncd migrate`",
        ));
        return Ok(());
    };
    out.push(finding(
        Level::Ok,
        format!("trigger `{}` on `servers` calls {}()", t.name, t.function),
    ));
    let mut missing_ops = Vec::new();
    for (on, op) in [
        (t.on_insert, "INSERT"),
        (t.on_update, "UPDATE"),
        (t.on_delete, "DELETE"),
    ] {
        if !on {
            missing_ops.push(op);
        }
    }
    if !missing_ops.is_empty() {
        out.push(finding(
            Level::Error,
            format!("trigger does not fire on {}", missing_ops.join(", ")),
        ));
    }
    if t.on_update && !t.update_columns.is_empty() {
        let mut wanted = vec!["address", "domain"];
        if shape.has_state {
            wanted.push("state");
        }
        if shape.has_enabled {
            wanted.push("enabled");
        }
        let missing: Vec<&str> = wanted
            .into_iter()
            .filter(|c| !t.update_columns.iter().any(|have| have == c))
            .collect();
        if missing.is_empty() {
            out.push(finding(
                Level::Ok,
                format!("trigger fires on UPDATE OF {}", t.update_columns.join(", ")),
            ));
        } else {
            out.push(finding(
                Level::Error,
                format!(
                    "trigger misses UPDATE OF {}: such changes are only seen on reconnect; run `syncd migrate`",
                    missing.join(", ")
                ),
            ));
        }
    }
    if t.rich_payload {
        out.push(finding(
            Level::Ok,
            "trigger sends the server name: syncd re-reads only changed servers",
        ));
    } else {
        out.push(finding(
            Level::Warn,
            "trigger sends an empty payload (original automc): every change re-reads the whole table; \
             `syncd migrate` installs the cheaper one",
        ));
    }
    Ok(())
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
