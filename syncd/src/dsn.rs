//! Postgres DSNs read the way libpq and tokio-postgres read them, never by
//! splitting on whitespace: `password = 'a b'` and `password='it\'s'` are one
//! value each. Used for the TLS-mode split ([`crate::pg_tls::split`]) and for
//! redaction, which prints only what tokio-postgres's own [`Config`] parsed
//! (user, hosts, ports, database), so a password cannot survive it in any
//! spelling.
use tokio_postgres::config::Host;
use tokio_postgres::Config;

use crate::pg_tls::{self, SslMode};

/// A key=value DSN that does not follow libpq's grammar. Carries no value
/// from the DSN (it may be the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("missing \"=\" after {0:?} in the connection string")]
    MissingEquals(String),
    #[error("unterminated quoted value for {0:?} in the connection string")]
    Unterminated(String),
}

/// The `key=value` pairs of a libpq connection string, in order: spaces are
/// allowed around `=`, values are bare (up to whitespace) or single-quoted,
/// and a backslash escapes the next character in both.
pub fn conninfo_pairs(dsn: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut out = Vec::new();
    let mut it = dsn.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(DsnError::MissingEquals(key));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(DsnError::Unterminated(key)),
                    Some('\'') => break,
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => return Err(DsnError::Unterminated(key)),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Write pairs back as a connection string tokio-postgres reads to the same
/// values (every value quoted, `'` and `\` escaped).
pub fn conninfo_join(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{k}='{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What may be shown of a DSN: `postgres://user:***@host:port/dbname` built
/// from the parsed config (`:***` only when a password is set). A DSN that
/// does not parse is not echoed at all.
pub fn redact(dsn: &str) -> String {
    let parsed = pg_tls::split(dsn).and_then(|s| {
        s.dsn
            .parse::<Config>()
            .map(|c| (c, s.mode))
            .map_err(pg_tls::DbUrlError::Parse)
    });
    let Ok((c, mode)) = parsed else {
        return "(a database URL that does not parse)".into();
    };
    let ports = c.get_ports();
    let hosts = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            // libpq's default port when none is given.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",");
    let user = c.get_user().unwrap_or_default();
    let password = if c.get_password().is_some() {
        ":***"
    } else {
        ""
    };
    let at = if user.is_empty() && password.is_empty() {
        ""
    } else {
        "@"
    };
    let db = c.get_dbname().unwrap_or_default();
    format!(
        "postgres://{user}{password}{at}{hosts}/{db}?sslmode={}",
        mode.as_str()
    )
}

/// The start-up warning for a TLS mode that encrypts without checking who
/// answers, or `None` when the mode verifies (or is plainly off).
pub fn tls_warning(mode: SslMode) -> Option<&'static str> {
    match mode {
        SslMode::Prefer | SslMode::Require => Some(
            "Postgres TLS does not verify the server certificate (sslmode prefer/require, \
             libpq's default): anyone on the path can pose as the database. To verify, add \
             sslmode=verify-full and sslrootcert=<CA file> (or PGSSLROOTCERT) to the DSN",
        ),
        SslMode::Disable | SslMode::VerifyCa | SslMode::VerifyFull => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_keep_spaces_quotes_and_backslashes() {
        let pairs =
            conninfo_pairs(r"host=db  user = u password = 'se cret  pw\'s\\' dbname=automc x=a\ b")
                .unwrap();
        let want = [
            ("host", "db"),
            ("user", "u"),
            ("password", r"se cret  pw's\"),
            ("dbname", "automc"),
            ("x", "a b"),
        ];
        assert_eq!(pairs.len(), want.len());
        for ((k, v), (wk, wv)) in pairs.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert_eq!(
            conninfo_pairs("host=db password='open"),
            Err(DsnError::Unterminated("password".into()))
        );
        assert_eq!(
            conninfo_pairs("host db"),
            Err(DsnError::MissingEquals("host".into()))
        );
    }

    #[test]
    fn joined_pairs_parse_back_to_the_same_password() {
        let pairs = conninfo_pairs(r"host=db user=u password = 'se cret  pw\'s\\'").unwrap();
        let c: Config = conninfo_join(&pairs).parse().unwrap();
        assert_eq!(c.get_password(), Some(br"se cret  pw's\".as_slice()));
        assert_eq!(c.get_user(), Some("u"));
    }

    #[test]
    fn redaction_never_shows_a_password_in_any_spelling() {
        let cases = [
            (
                "postgres://u:hunter2@db:5432/automc?sslmode=disable",
                "postgres://u:***@db:5432/automc?sslmode=disable",
            ),
            (
                "postgres://u@db/automc",
                "postgres://u@db:5432/automc?sslmode=prefer",
            ),
            (
                "postgresql://db/automc?user=u&password=hunter2",
                "postgres://u:***@db:5432/automc?sslmode=prefer",
            ),
            (
                "host=db user=u password=hunter2 dbname=automc",
                "postgres://u:***@db:5432/automc?sslmode=prefer",
            ),
            (
                r"host=db port=5433 user=u password = 'se cret  pw\'s' dbname=automc sslmode=verify-full",
                "postgres://u:***@db:5433/automc?sslmode=verify-full",
            ),
            (
                "host=db password='hunter2",
                "(a database URL that does not parse)",
            ),
            ("hunter2", "(a database URL that does not parse)"),
        ];
        for (dsn, want) in cases {
            let got = redact(dsn);
            assert_eq!(got, want, "{dsn}");
            for secret in ["hunter2", "se cret", "cret"] {
                assert!(!got.contains(secret), "{dsn} -> {got}");
            }
        }
    }

    #[test]
    fn unverified_tls_modes_warn_and_say_how_to_verify() {
        for mode in [SslMode::Prefer, SslMode::Require] {
            assert!(tls_warning(mode).is_some_and(|w| w.contains("verify-full")));
        }
        for mode in [SslMode::Disable, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(tls_warning(mode), None);
        }
    }
}
