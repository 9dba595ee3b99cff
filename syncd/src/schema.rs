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
use crate::options::{BackendRow, OptionsRow};

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

-- One trigger function for every table: its argument names the column that
-- holds the server's name ('name' on servers, 'server' elsewhere; the
-- original automc trigger passes none).
CREATE OR REPLACE FUNCTION automc_notify_routes_changed() RETURNS trigger AS $$
DECLARE
    col TEXT := coalesce(TG_ARGV[0], 'name');
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('automc_routes_changed', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM automc_notify_server(to_jsonb(OLD) ->> col);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM automc_notify_server(to_jsonb(NEW) ->> col);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS automc_servers_route_notify ON servers;
CREATE TRIGGER automc_servers_route_notify
    AFTER INSERT OR UPDATE OF name, domain, address, state, enabled OR DELETE ON servers
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed('name');
DROP TRIGGER IF EXISTS automc_servers_truncate_notify ON servers;
CREATE TRIGGER automc_servers_truncate_notify
    AFTER TRUNCATE ON servers
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_routes_changed('name');

DROP TRIGGER IF EXISTS automc_server_aliases_notify ON server_aliases;
CREATE TRIGGER automc_server_aliases_notify
    AFTER INSERT OR UPDATE OR DELETE ON server_aliases
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed('server');
DROP TRIGGER IF EXISTS automc_server_aliases_truncate_notify ON server_aliases;
CREATE TRIGGER automc_server_aliases_truncate_notify
    AFTER TRUNCATE ON server_aliases
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_routes_changed('server');

-- Extra backends of a server (servers.address stays the first, priority 0).
CREATE TABLE IF NOT EXISTS server_backends (
    server   TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE ON UPDATE CASCADE,
    address  TEXT NOT NULL,
    weight   INT NOT NULL DEFAULT 1,
    priority INT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS server_backends_server_idx ON server_backends (server);
DROP TRIGGER IF EXISTS automc_server_backends_notify ON server_backends;
CREATE TRIGGER automc_server_backends_notify
    AFTER INSERT OR UPDATE OR DELETE ON server_backends
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed('server');
DROP TRIGGER IF EXISTS automc_server_backends_truncate_notify ON server_backends;
CREATE TRIGGER automc_server_backends_truncate_notify
    AFTER TRUNCATE ON server_backends
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_routes_changed('server');

-- Per-server options; NULL means the global default (docs/routing.md).
CREATE TABLE IF NOT EXISTS server_options (
    server TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE ON UPDATE CASCADE
);
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS strategy TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS asleep_motd TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS starting_motd TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS favicon BYTEA;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS max_players INT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS allow_cidrs CIDR[];
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS deny_cidrs CIDR[];
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS rewrite_host TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS proxy_protocol BOOLEAN;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS hold_timeout INTERVAL;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS sleep_after INTERVAL;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS failed_motd TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS stopping_motd TEXT;
ALTER TABLE server_options ADD COLUMN IF NOT EXISTS wake_allow_players TEXT[];
DROP TRIGGER IF EXISTS automc_server_options_notify ON server_options;
CREATE TRIGGER automc_server_options_notify
    AFTER INSERT OR UPDATE OR DELETE ON server_options
    FOR EACH ROW EXECUTE FUNCTION automc_notify_routes_changed('server');
DROP TRIGGER IF EXISTS automc_server_options_truncate_notify ON server_options;
CREATE TRIGGER automc_server_options_truncate_notify
    AFTER TRUNCATE ON server_options
    FOR EACH STATEMENT EXECUTE FUNCTION automc_notify_routes_changed('server');
-- Before one function served every table, the other tables had their own.
DROP FUNCTION IF EXISTS automc_notify_alias_changed();
"#;

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
        if !b.has_backends && a.has_backends {
            done.push("created table server_backends".to_owned());
        }
        if b.options != a.options {
            if b.options == 0 {
                done.push("created table server_options".to_owned());
            } else {
                done.push("added server_options columns".to_owned());
            }
        }
        if done.is_empty() {
            "schema already current; notify triggers refreshed".to_owned()
        } else {
            format!("{}; notify triggers installed", done.join(", "))
        }
    }
}

/// What the connected database has; decides the read query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub has_servers: bool,
    pub has_enabled: bool,
    pub has_state: bool,
    pub has_aliases: bool,
    /// `server_backends` with its server, address, weight and priority
    /// columns, readable by this role (a role granted only the original
    /// tables keeps syncing without it).
    pub has_backends: bool,
    /// Which of [`OPTION_COLUMNS`] `server_options` has (bit i = column i,
    /// bit 15 = the table); 0 when it does not exist or this role may not
    /// read it.
    pub options: u16,
}

/// The `server_options` columns syncd reads, with the SQL that reads each
/// (cast so a hand-made table with looser types still reads) and the NULL
/// that stands in for a missing column.
pub const OPTION_COLUMNS: [(&str, &str, &str); 14] = [
    ("strategy", "o.strategy::text", "NULL::text"),
    ("asleep_motd", "o.asleep_motd::text", "NULL::text"),
    ("starting_motd", "o.starting_motd::text", "NULL::text"),
    ("favicon", "o.favicon::bytea", "NULL::bytea"),
    ("max_players", "o.max_players::int8", "NULL::int8"),
    ("allow_cidrs", "o.allow_cidrs::text[]", "NULL::text[]"),
    ("deny_cidrs", "o.deny_cidrs::text[]", "NULL::text[]"),
    ("rewrite_host", "o.rewrite_host::text", "NULL::text"),
    (
        "proxy_protocol",
        "o.proxy_protocol::boolean",
        "NULL::boolean",
    ),
    (
        "hold_timeout",
        "EXTRACT(EPOCH FROM o.hold_timeout)::float8",
        "NULL::float8",
    ),
    (
        "sleep_after",
        "EXTRACT(EPOCH FROM o.sleep_after)::float8",
        "NULL::float8",
    ),
    ("failed_motd", "o.failed_motd::text", "NULL::text"),
    ("stopping_motd", "o.stopping_motd::text", "NULL::text"),
    (
        "wake_allow_players",
        "o.wake_allow_players::text[]",
        "NULL::text[]",
    ),
];
const ALL_OPTIONS: u16 = (1 << OPTION_COLUMNS.len()) - 1;

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
                    to_regclass('server_aliases') IS NOT NULL,
                    (SELECT count(*) FROM pg_attribute
                     WHERE attrelid = to_regclass('server_backends') AND NOT attisdropped
                       AND attname IN ('server', 'address', 'weight', 'priority')) = 4
                      AND COALESCE(has_table_privilege(to_regclass('server_backends')::oid, 'SELECT'), false),
                    COALESCE(has_table_privilege(to_regclass('server_options')::oid, 'SELECT'), false),
                    ARRAY(SELECT attname::text FROM pg_attribute
                          WHERE attrelid = to_regclass('server_options') AND attnum > 0
                            AND NOT attisdropped)",
            &[],
        )
        .await?;
    let option_table: bool = row.get(5);
    let columns: Vec<String> = row.get(6);
    let mut options = 0u16;
    if option_table && columns.iter().any(|c| c == "server") {
        for (i, (name, _, _)) in OPTION_COLUMNS.iter().enumerate() {
            if columns.iter().any(|c| c == name) {
                options |= 1 << i;
            }
        }
        // The table alone (no option column yet) still counts as present.
        options |= 1 << 15;
    }
    Ok(Shape {
        has_servers: row.get(0),
        has_enabled: row.get(1),
        has_state: row.get(2),
        has_aliases: row.get(3),
        has_backends: row.get(4),
        options,
    })
}

impl Shape {
    /// Everything `syncd migrate` creates is there.
    pub fn is_current(&self) -> bool {
        self.has_servers
            && self.has_enabled
            && self.has_state
            && self.has_aliases
            && self.has_backends
            && self.options & ALL_OPTIONS == ALL_OPTIONS
    }

    /// Whether `server_options` exists.
    pub fn has_options(&self) -> bool {
        self.options != 0
    }

    /// Whether `server_options` has column `i` of [`OPTION_COLUMNS`].
    pub fn has_option(&self, i: usize) -> bool {
        self.options & (1 << i) != 0
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
        // One aggregate per server, ordered alike so the arrays line up.
        let (backends, backends_join) = if self.has_backends {
            (
                "bk.addrs, bk.weights, bk.prios",
                " LEFT JOIN LATERAL (SELECT \
                 array_agg(b.address::text ORDER BY b.priority, b.address, b.weight) AS addrs, \
                 array_agg(b.weight::int4 ORDER BY b.priority, b.address, b.weight) AS weights, \
                 array_agg(b.priority::int4 ORDER BY b.priority, b.address, b.weight) AS prios \
                 FROM server_backends b WHERE b.server = s.name) bk ON true",
            )
        } else {
            ("NULL::text[], NULL::int4[], NULL::int4[]", "")
        };
        let mut options = vec![if self.has_options() {
            "o.server IS NOT NULL"
        } else {
            "false"
        }];
        for (i, (_, read, null)) in OPTION_COLUMNS.iter().enumerate() {
            options.push(if self.has_option(i) { read } else { null });
        }
        let options = options.join(", ");
        let options_join = if self.has_options() {
            " LEFT JOIN server_options o ON o.server = s.name"
        } else {
            ""
        };
        format!(
            "SELECT s.name::text, s.domain::text, s.address::text, {state}, {enabled}, {aliases}, \
             {backends}, {options} \
             FROM servers s{backends_join}{options_join}{filter}"
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
        backends: backend_rows(row)?,
        options: options_row(row)?,
    })
}

/// Columns 6..=8 of [`Shape::read_query`]: the backends' parallel arrays.
fn backend_rows(row: &Row) -> Result<Vec<BackendRow>, tokio_postgres::Error> {
    let addrs: Vec<Option<String>> = row.try_get::<_, Option<_>>(6)?.unwrap_or_default();
    let weights: Vec<Option<i32>> = row.try_get::<_, Option<_>>(7)?.unwrap_or_default();
    let prios: Vec<Option<i32>> = row.try_get::<_, Option<_>>(8)?.unwrap_or_default();
    Ok(addrs
        .into_iter()
        .zip(weights)
        .zip(prios)
        .map(|((a, w), p)| BackendRow {
            address: a.unwrap_or_default(),
            weight: w.unwrap_or(1),
            priority: p.unwrap_or(0),
        })
        .collect())
}

/// Columns 9.. of [`Shape::read_query`]: whether an options row exists, then
/// [`OPTION_COLUMNS`] in order.
fn options_row(row: &Row) -> Result<Option<OptionsRow>, tokio_postgres::Error> {
    const AT: usize = 10;
    if !row.try_get::<_, bool>(9)? {
        return Ok(None);
    }
    let texts = |i: usize| -> Result<Option<Vec<String>>, tokio_postgres::Error> {
        Ok(row
            .try_get::<_, Option<Vec<Option<String>>>>(AT + i)?
            .map(|v| v.into_iter().flatten().collect()))
    };
    Ok(Some(OptionsRow {
        strategy: row.try_get(AT)?,
        asleep_motd: row.try_get(AT + 1)?,
        starting_motd: row.try_get(AT + 2)?,
        favicon: row.try_get(AT + 3)?,
        max_players: row.try_get(AT + 4)?,
        allow_cidrs: texts(5)?,
        deny_cidrs: texts(6)?,
        rewrite_host: row.try_get(AT + 7)?,
        proxy_protocol: row.try_get(AT + 8)?,
        hold_timeout: row.try_get(AT + 9)?,
        sleep_after: row.try_get(AT + 10)?,
        failed_motd: row.try_get(AT + 11)?,
        stopping_motd: row.try_get(AT + 12)?,
        wake_allow_players: texts(13)?,
    }))
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
        let none = Shape::default();
        let current = Shape {
            has_servers: true,
            has_enabled: true,
            has_state: true,
            has_aliases: true,
            has_backends: true,
            options: u16::MAX,
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
            "created table servers, created table server_aliases, created table server_backends, \
             created table server_options; notify triggers installed"
        );
        assert_eq!(
            report(original, current).summary(),
            "added column servers.enabled, created table server_aliases, created table server_backends, \
             created table server_options; notify triggers installed"
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
            has_state: true,
            ..Shape::default()
        };
        let q = old.read_query(false);
        assert!(
            !q.contains("s.enabled")
                && !q.contains("server_aliases")
                && !q.contains("server_backends")
                && !q.contains("server_options"),
            "{q}"
        );
        let new = Shape {
            has_enabled: true,
            has_aliases: true,
            has_backends: true,
            // server_options as the sleep work made it: sleep_after only.
            options: 1 << 15 | 1 << 10,
            ..old
        };
        let q = new.read_query(true);
        assert!(q.contains("s.enabled") && q.contains("server_aliases") && q.contains("$1"));
        assert!(q.contains("server_backends") && q.contains("o.sleep_after"));
        assert!(!q.contains("o.strategy") && q.contains("NULL::text"), "{q}");
        assert!(!new.is_current());
    }
}
