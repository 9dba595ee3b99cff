//! `syncd check`: a read-only diagnosis of the database syncd would serve
//! from: the `servers` table and its columns, the notify triggers and the
//! columns they watch, the payload kind they send, and the route count.

use std::fmt;

use tokio_postgres::Client;

use crate::schema::{self, Shape};

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
    let shape = schema::detect(client).await?;
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
    check_option_tables(client, shape, &mut out).await?;
    let rows = client.query(&shape.read_query(false), &[]).await?;
    let mut server_rows = Vec::with_capacity(rows.len());
    for r in &rows {
        server_rows.push(schema::server_row(r)?);
    }
    let (routes, problems) = crate::diff::routes_from_rows(server_rows);
    for p in problems {
        out.push(finding(Level::Error, p.to_string()));
    }
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

/// `server_backends` and `server_options`: present, complete, notifying.
async fn check_option_tables(
    client: &Client,
    shape: Shape,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let tables = [
        ("server_backends", shape.has_backends, "no extra backends"),
        (
            "server_options",
            shape.has_options(),
            "no per-server options",
        ),
    ];
    for (table, present, without) in tables {
        if !present {
            out.push(finding(
                Level::Warn,
                format!("table `{table}` missing: {without}; `syncd migrate` creates it"),
            ));
            continue;
        }
        let triggers = triggers_on(client, table).await?;
        if triggers
            .iter()
            .any(|t| t.on_insert && t.on_delete && t.on_update)
        {
            out.push(finding(
                Level::Ok,
                format!("table `{table}` present, with its notify trigger"),
            ));
        } else {
            out.push(finding(
                Level::Error,
                format!(
                    "no notify trigger on `{table}`: its changes are only seen on reconnect; run `syncd migrate`"
                ),
            ));
        }
    }
    if shape.has_options() {
        let missing: Vec<&str> = schema::OPTION_COLUMNS
            .iter()
            .enumerate()
            .filter(|(i, _)| !shape.has_option(*i))
            .map(|(_, (name, _, _))| *name)
            .collect();
        if !missing.is_empty() {
            out.push(finding(
                Level::Warn,
                format!(
                    "`server_options` lacks {}: those options are the global defaults; `syncd migrate` adds them",
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(())
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
