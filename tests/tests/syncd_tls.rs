//! gRPC over TLS and mutual TLS, with certificates made by the openssl CLI
//! for each test.
use std::path::{Path, PathBuf};
use std::process::Command;

use automc_proto::v1::route_sync_client::RouteSyncClient;
use automc_proto::v1::ListRoutesRequest;
use automc_tests::stack::{migrated_pg, start_syncd};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found: install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
fn make_pki() -> Pki {
    let dir = std::env::temp_dir().join(format!(
        "automc-tls-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=automc test CA",
    ]);
    openssl(&dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        let subj = format!("/CN=automc {who}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&dir, &req);
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
    Pki { dir }
}

async fn list_routes(endpoint: Endpoint) -> Result<usize, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RouteSyncClient::new(channel)
        .list_routes(ListRoutesRequest {})
        .await
        .map(|r| r.into_inner().routes.len())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = make_pki();
    let pg = migrated_pg().await;
    pg.execute("INSERT INTO servers (name, domain, address) VALUES ('lobby', 'lobby.example.com', '10.0.0.1:1')")
        .await;
    let tls = syncd::GrpcTls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: Some(pki.path("ca.pem")),
    };
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_tls = Some(tls)).await;
    let url = format!("https://{}", syncd.grpc_addr);
    let ca = Certificate::from_pem(pki.read("ca.pem"));

    let with_cert = Endpoint::from_shared(url.clone())
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost")
                .identity(Identity::from_pem(
                    pki.read("client.pem"),
                    pki.read("client.key"),
                )),
        )
        .expect("tls config");
    assert_eq!(list_routes(with_cert).await, Ok(1));

    let without_cert = Endpoint::from_shared(url)
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .expect("tls config");
    assert!(
        list_routes(without_cert).await.is_err(),
        "no client certificate must be refused"
    );

    let plaintext = Endpoint::from_shared(format!("http://{}", syncd.grpc_addr)).expect("endpoint");
    assert!(
        list_routes(plaintext).await.is_err(),
        "plaintext must be refused"
    );
}

#[tokio::test]
async fn tls_without_a_client_ca_serves_any_client_that_trusts_the_server() {
    let pki = make_pki();
    let pg = migrated_pg().await;
    let tls = syncd::GrpcTls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: None,
    };
    let syncd = start_syncd(&pg.dsn(), |c| c.grpc_tls = Some(tls)).await;
    let endpoint = Endpoint::from_shared(format!("https://{}", syncd.grpc_addr))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
                .domain_name("localhost"),
        )
        .expect("tls config");
    assert_eq!(list_routes(endpoint).await, Ok(0));
}

#[tokio::test]
async fn unreadable_or_bad_certificates_fail_start_as_config_errors() {
    let pki = make_pki();
    let missing = syncd::Config {
        grpc_tls: Some(syncd::GrpcTls {
            cert: pki.path("nope.pem"),
            key: pki.path("server.key"),
            client_ca: None,
        }),
        ..syncd::Config::new("postgres://u@127.0.0.1:1/db")
    };
    let err = syncd::start(missing, Default::default())
        .await
        .err()
        .expect("fails");
    assert!(
        matches!(err, syncd::Error::Config(_)) && err.to_string().contains("nope.pem"),
        "{err}"
    );
    let swapped = syncd::Config {
        grpc_tls: Some(syncd::GrpcTls {
            cert: pki.path("server.key"),
            key: pki.path("server.pem"),
            client_ca: None,
        }),
        ..syncd::Config::new("postgres://u@127.0.0.1:1/db")
    };
    let err = syncd::start(swapped, Default::default())
        .await
        .err()
        .expect("fails");
    assert!(matches!(err, syncd::Error::Config(_)), "{err}");
}
