//! TLS (and mutual TLS) on syncd's gRPC port, with certificate reload.
//!
//! rustls with the ring provider only. The server config is built from three
//! PEM files: the certificate chain, its private key and, for mutual TLS, the
//! CA that client (edge) certificates must chain to. A reload task looks at
//! the files every `reload_interval` (a fingerprint of their contents: no
//! mtime granularity surprises) and, when one changed, builds a new config
//! and swaps it in; every new connection takes
//! the current config, established connections keep theirs. A bad file
//! (half-written, wrong key) is logged and the previous config stays: a
//! rotation never takes the port down. No SIGHUP is needed (and none is
//! handled): writing the files is the whole procedure.
//!
//! The handshakes themselves run in the accept layer (`accept`), under its
//! deadline and per-peer caps.
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `Some` = mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not make a TLS config: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Build a server config from the files as they are now.
pub fn load(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = read_certs("certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Read {
        what: "private key",
        path: files.key.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("client CA", ca)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server config in force, swapped when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<u64>,
}

impl ServerTls {
    /// Load the files (an error here is a configuration error at start).
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = load(&files)?;
        let stamp = stamps(&files);
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
            stamp: RwLock::new(stamp),
        }))
    }

    /// The config new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reload when a file changed since the last look. `Ok(true)` = swapped.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let seen = self.stamp.read().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
        }
        // Remember the stamp even on failure, so a broken file is reported
        // once, not every interval; the next write is picked up again.
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
        let config = load(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(true)
    }

    /// Check the files every `reload_interval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick =
            tokio::time::interval(self.files.reload_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(
                    cert = %self.files.cert.display(),
                    mutual = self.files.client_ca.is_some(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "TLS files changed but do not load; keeping the previous certificate"
                ),
            }
        }
    }
}

/// A fingerprint of the files' contents (a missing file counts as empty).
fn stamps(files: &TlsFiles) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in std::iter::once(&files.cert)
        .chain(std::iter::once(&files.key))
        .chain(files.client_ca.iter())
    {
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{tag}.pem")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_mismatched_pair_keeps_the_previous_config() {
        let dir = std::env::temp_dir().join(format!("automc-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair(&dir, "a");
        let (new_cert, new_key) = pair(&dir, "b");
        let tls = ServerTls::new(TlsFiles::new(&cert, &key)).unwrap();
        let first = tls.current();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        // Half a rotation: the new certificate with the old key.
        std::fs::copy(&new_cert, &cert).unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&first, &tls.current()), "old config kept");
        // Reported once, not on every tick.
        assert!(!tls.reload_if_changed().unwrap());

        std::fs::copy(&new_key, &key).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.current()), "new config in force");

        // A missing file is an error at start, not a panic.
        assert!(ServerTls::new(TlsFiles::new(dir.join("nope.pem"), &key)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
