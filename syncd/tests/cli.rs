//! The syncd command line as an operator meets it: help for every
//! subcommand, and a bad configuration exits 64 with a readable message
//! instead of a panic or a stack trace.
use std::process::Command;

fn syncd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(args)
        .env_remove("SYNCD_DATABASE_URL")
        .env_remove("AUTOMC_DSN")
        .output()
        .expect("run syncd")
}

#[test]
fn help_lists_every_subcommand() {
    let out = syncd(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "migrate", "check"] {
        assert!(text.contains(sub), "--help does not mention {sub}:\n{text}");
        let sub_help = syncd(&[sub, "--help"]);
        assert!(sub_help.status.success(), "{sub} --help failed");
        assert!(String::from_utf8_lossy(&sub_help.stdout).contains("--database-url"));
    }
}

#[test]
fn missing_database_url_exits_64_with_a_clear_message() {
    let out = syncd(&["migrate"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("database"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn malformed_listen_address_exits_64() {
    let out = syncd(&[
        "serve",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
        "--grpc-listen",
        "not-an-address",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
