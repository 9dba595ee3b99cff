//! Test certificates made at test time with rcgen (ring): a CA, server
//! certificates for `localhost` / `127.0.0.1`, client certificates, written
//! as PEM files into a temp directory removed on drop.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A certificate authority for tests.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Pem {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Pem {
        self.leaf(
            &["localhost", "127.0.0.1"],
            "automc test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (for mutual TLS).
    pub fn client(&self, cn: &str) -> Pem {
        self.leaf(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A temp directory of PEM files, removed on drop.
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new() -> CertDir {
        let dir = std::env::temp_dir().join(format!(
            "automc-certs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create cert dir");
        CertDir { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Write `name` atomically (temp file + rename, as a rotation should)
    /// and return its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write pem");
        std::fs::rename(&tmp, &path).expect("rename pem");
        path
    }
}

impl Default for CertDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
