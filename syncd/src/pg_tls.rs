//! TLS to Postgres, with libpq's `sslmode` words (tokio-postgres-rustls,
//! ring provider).
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, so the
//! DSN is read here first: `sslmode=verify-ca` / `verify-full` and
//! `sslrootcert=<file>` are taken out and turned into a rustls verifier, and
//! tokio-postgres is told `require`. As in libpq:
//! - `disable`: plaintext;
//! - `prefer` (the default) and `require`: encrypted, the server certificate
//!   is not checked (`prefer` falls back to plaintext when the server has no
//!   TLS);
//! - `verify-ca`: the certificate must chain to `sslrootcert`;
//! - `verify-full`: and must name the host dialled.
//!
//! `sslrootcert` defaults to `PGSSLROOTCERT`, then to the public webpki roots.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How strictly the server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A DSN taken apart: what tokio-postgres can parse, and the TLS part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The DSN with `sslmode` reduced to what tokio-postgres knows and
    /// `sslrootcert` removed.
    pub dsn: String,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

impl SslMode {
    /// The libpq word for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Take `sslmode` and `sslrootcert` out of a URL or key=value DSN. The
/// key=value form is read with libpq's grammar ([`crate::dsn`]), so quoted
/// values with spaces come through unchanged.
pub fn split(dsn: &str) -> Result<Split, DbUrlError> {
    let is_url = dsn.starts_with("postgres://") || dsn.starts_with("postgresql://");
    let mut mode = None;
    let mut root_cert = None;
    if !is_url {
        let mut kept = Vec::new();
        for (k, v) in crate::dsn::conninfo_pairs(dsn)? {
            match k.as_str() {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root_cert = Some(v),
                _ => kept.push((k, v)),
            }
        }
        let mode = ssl_mode(mode.as_deref())?;
        kept.push(("sslmode".into(), pg_mode(mode).into()));
        return Ok(Split {
            dsn: crate::dsn::conninfo_join(&kept),
            mode,
            root_cert: root_cert.or_else(|| std::env::var("PGSSLROOTCERT").ok()),
        });
    }
    let mut kept: Vec<String> = Vec::new();
    let (head, params, sep) = match dsn.split_once('?') {
        Some((h, q)) => (h.to_owned(), q.split('&').collect::<Vec<_>>(), "&"),
        None => (dsn.to_owned(), Vec::new(), "&"),
    };
    for p in params {
        match p.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_owned()),
            Some(("sslrootcert", v)) => root_cert = Some(v.to_owned()),
            _ if p.is_empty() => {}
            _ => kept.push(p.to_owned()),
        }
    }
    let mode = ssl_mode(mode.as_deref())?;
    kept.push(format!("sslmode={}", pg_mode(mode)));
    Ok(Split {
        dsn: format!("{head}?{}", kept.join(sep)),
        mode,
        root_cert: root_cert.or_else(|| std::env::var("PGSSLROOTCERT").ok()),
    })
}

fn ssl_mode(word: Option<&str>) -> Result<SslMode, DbUrlError> {
    Ok(match word.unwrap_or("prefer") {
        "disable" => SslMode::Disable,
        "prefer" | "allow" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(DbUrlError::SslMode(other.to_owned())),
    })
}

/// What tokio-postgres is told (it checks nothing itself; the verifier does).
fn pg_mode(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    }
}

/// Parse a DSN into a tokio-postgres config and the TLS connector it needs.
pub fn parse(dsn: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DbUrlError> {
    let s = split(dsn)?;
    let config: tokio_postgres::Config = s.dsn.parse().map_err(DbUrlError::Parse)?;
    let tls = connector(s.mode, s.root_cert.as_deref())?;
    Ok((config, tls))
}

/// Connect once (for `migrate` and `check`), driving the connection in a
/// task. The driver ends when the client is dropped and returns the server's
/// NOTICE messages (e.g. "column already exists, skipping"), so the caller
/// decides whether to show them instead of them landing in the logs.
pub async fn connect(
    dsn: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<Vec<String>>), ConnectError> {
    let (config, tls) = parse(dsn)?;
    let (client, mut conn) = config.connect(tls).await?;
    let driver = tokio::spawn(async move {
        let mut notices = Vec::new();
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    notices.push(format!("{}: {}", n.severity(), n.message()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres connection ended");
                    break;
                }
            }
        }
        notices
    });
    Ok((client, driver))
}

/// A database URL syncd cannot use. Carries no value that may be the
/// password: the Postgres parse error names the bad key, not its value.
#[derive(Debug, thiserror::Error)]
pub enum DbUrlError {
    #[error(transparent)]
    Conninfo(#[from] crate::dsn::DsnError),
    #[error("unknown sslmode {0:?} (disable, allow, prefer, require, verify-ca or verify-full)")]
    SslMode(String),
    #[error("not a valid Postgres DSN: {0}")]
    Parse(#[source] tokio_postgres::Error),
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("TLS certificate verifier: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("cannot read sslrootcert {path}: {source}")]
    RootCert {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {0} holds no usable certificate")]
    NoUsableRootCert(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("database URL: {0}")]
    Config(#[from] DbUrlError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(mode: SslMode, root_cert: Option<&str>) -> Result<MakeRustlsConnect, DbUrlError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(DbUrlError::Tls)?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = roots(root_cert)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(DbUrlError::Verifier)?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(root_cert: Option<&str>) -> Result<Arc<RootCertStore>, DbUrlError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| DbUrlError::RootCert {
                    path: path.into(),
                    source,
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DbUrlError::NoUsableRootCert(path.into()));
            }
        }
        _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(Arc::new(roots))
}

/// `require`: encrypt, check nothing (libpq's meaning of the word).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; a name mismatch alone is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_words_are_split_out_of_both_dsn_forms() {
        let s = split("postgres://u:p@db:5432/automc?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x")
            .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(
            s.dsn,
            "postgres://u:p@db:5432/automc?application_name=x&sslmode=require"
        );
        let s = split("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.dsn, "host='db' user='u' sslmode='require'");
        // A quoted password with spaces survives the split unchanged.
        let s = split("host=db password = 'a  b' sslmode = 'require'").unwrap();
        assert_eq!(s.mode, SslMode::Require);
        let c: tokio_postgres::Config = s.dsn.parse().unwrap();
        assert_eq!(c.get_password(), Some(b"a  b".as_slice()));
        let s = split("postgres://u@db/automc").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(s.dsn, "postgres://u@db/automc?sslmode=prefer");
        let s = split("postgres://u@db/automc?sslmode=disable").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert!(split("host=db sslmode=sometimes").is_err());
        for dsn in [
            "postgres://u:p@db/automc?sslmode=require",
            "host=db sslmode=verify-full sslrootcert=system",
        ] {
            assert!(parse(dsn).is_ok(), "{dsn}");
        }
    }
}
