//! TLS between syncd and Postgres (`sslmode` as libpq spells it): the test
//! cluster gets a certificate from a test CA and `ssl = on`; syncd reads
//! and LISTENs over `verify-full`, an untrusted server is refused, and
//! `require` / `disable` keep working.
use std::process::Command;

use automc_tests::certs::{CertDir, TestCa};
use automc_tests::pg::TestPg;
use automc_tests::stack::{eventually, migrated_pg, start_syncd, DEADLINE};

/// Give the cluster a certificate and turn TLS on (reload, no restart).
async fn enable_ssl(pg: &TestPg, dir: &CertDir, ca: &TestCa) {
    let server = ca.server();
    let cert = dir.write("pg.crt", &server.cert);
    let key = dir.write("pg.key", &server.key);
    // Postgres insists the key is private to its user.
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["chmod", "600", key.to_str().expect("utf8 path")]);
    if std::fs::metadata(dir.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        run(&[
            "chown",
            "-R",
            "postgres:postgres",
            dir.path().to_str().expect("utf8 path"),
        ]);
    }
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        pg.execute(&sql).await;
    }
    let dsn = format!("{}?sslmode=require", pg.dsn());
    let dsn = &dsn;
    eventually("Postgres accepts TLS", DEADLINE, || async move {
        syncd::check(dsn).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_listens_over_verify_full_tls_and_refuses_an_untrusted_server() {
    let pg = migrated_pg().await;
    pg.execute(
        "INSERT INTO servers (name, domain, address) VALUES ('a', 'a.example.com', '10.0.0.1:25565')",
    )
    .await;
    let dir = CertDir::new();
    let ca = TestCa::new("postgres CA");
    enable_ssl(&pg, &dir, &ca).await;
    let ca_path = dir.write("root.crt", &ca.pem());
    let stranger = dir.write("stranger.crt", &TestCa::new("stranger").pem());

    let full = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.dsn(),
        ca_path.display()
    );
    let syncd = start_syncd(&full, |_| {}).await;
    let mut w = syncd.watch("edge").await;
    assert_eq!(w.state().table.len(), 1);
    let c = pg.client().await;
    let ssl: bool = c
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'automc-syncd'",
            &[],
        )
        .await
        .expect("syncd's connection is listed")
        .get(0);
    assert!(ssl, "syncd's LISTEN connection is encrypted");
    pg.execute("UPDATE servers SET address = '10.0.0.2:25565' WHERE name = 'a'")
        .await;
    w.wait_until("a notification over TLS", DEADLINE, |s| {
        s.address_of("a").as_deref() == Some("10.0.0.2:25565")
    })
    .await;

    for mode in ["verify-full", "verify-ca"] {
        let untrusted = format!(
            "{}?sslmode={mode}&sslrootcert={}",
            pg.dsn(),
            stranger.display()
        );
        let err = syncd::check(&untrusted).await.err();
        assert!(
            err.is_some(),
            "{mode} with an unrelated CA must refuse the server"
        );
    }
    for mode in ["require", "disable", "prefer"] {
        let dsn = format!("{}?sslmode={mode}", pg.dsn());
        assert!(syncd::check(&dsn).await.is_ok(), "sslmode={mode} connects");
    }
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres dbname=automc sslmode=verify-full sslrootcert={}",
        pg.port(),
        ca_path.display()
    );
    assert!(
        syncd::check(&kv).await.is_ok(),
        "key=value DSNs take the same words"
    );
}
