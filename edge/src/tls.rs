//! TLS to syncd: `https://` syncd URLs, the CA that syncd's certificate must
//! chain to (`--syncd-ca`; without it the public webpki roots), and an
//! optional client certificate for mutual TLS (`--tls-cert`, `--tls-key`).
//!
//! rustls with the ring provider (through tonic's `tls-ring`). The files are
//! read when the edge starts; rotating the edge's own client certificate
//! takes a (rolling) restart of the edge. syncd's server certificate can
//! rotate freely as long as it chains to the configured CA.
use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where the PEM files are. All `None` = public roots, no client cert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncdTls {
    /// CA bundle syncd's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to syncd (mutual TLS).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
}

/// The TLS flags of `edge`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM CA bundle syncd's certificate must chain to (https:// syncd URLs);
    /// without it, the public webpki roots.
    #[arg(long = "syncd-ca", env = "EDGE_SYNCD_CA")]
    pub syncd_ca: Option<PathBuf>,
    /// PEM client certificate presented to syncd (mutual TLS; needs --tls-key).
    #[arg(long = "tls-cert", env = "EDGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "EDGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl From<TlsArgs> for SyncdTls {
    fn from(a: TlsArgs) -> Self {
        Self {
            ca: a.syncd_ca,
            cert: a.tls_cert,
            key: a.tls_key,
        }
    }
}

/// TLS toward syncd that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
    #[error("--syncd-ca / --tls-cert / --tls-key are set but no --syncd URL is https://")]
    NoHttpsUrl,
    #[error("TLS for {url}: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.clone(),
        source,
    })
}

impl SyncdTls {
    /// Whether anything TLS-specific was configured.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The tonic client TLS config from the files as they are now.
    pub fn client_config(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca {
            Some(ca) => c.ca_certificate(Certificate::from_pem(read("--syncd-ca", ca)?)),
            None => c.with_webpki_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                c = c.identity(Identity::from_pem(
                    read("--tls-cert", cert)?,
                    read("--tls-key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(TlsError::HalfIdentity),
        }
        Ok(c)
    }

    /// Check the URLs and files before starting.
    pub fn validate(&self, urls: &[String]) -> Result<(), TlsError> {
        let any_https = urls.iter().any(|u| u.starts_with("https://"));
        if self.is_configured() && !any_https {
            return Err(TlsError::NoHttpsUrl);
        }
        if any_https {
            self.client_config()?;
        }
        Ok(())
    }

    /// Add TLS to the endpoint of an `https://` URL.
    pub fn apply(&self, url: &str, ep: Endpoint) -> Result<Endpoint, TlsError> {
        if !url.starts_with("https://") {
            return Ok(ep);
        }
        ep.tls_config(self.client_config()?)
            .map_err(|source| TlsError::Endpoint {
                url: url.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_without_an_https_url_are_a_config_error() {
        let t = SyncdTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..SyncdTls::default()
        };
        assert!(t.validate(&["http://a:1".into()]).is_err());
        let err = t.validate(&["https://a:1".into()]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(SyncdTls::default().validate(&["http://a:1".into()]).is_ok());
    }
}
