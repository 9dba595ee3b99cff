//! The syncd command line as an operator meets it: help for every
//! subcommand, and a bad configuration exits 64 with a readable message
//! instead of a panic or a stack trace.
use std::process::Command;

fn syncd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(args)
        .env_remove("SYNCD_DATABASE_URL")
        .env_remove("AUTOMC_DSN")
        .env_remove("SYNCD_WAKER_URL")
        .env_remove("AUTOMC_WAKER_URL")
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

#[test]
fn missing_database_url_exits_64_naming_every_way_to_set_it() {
    for args in [&[][..], &["serve"][..], &["migrate"][..], &["check"][..]] {
        let out = syncd(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--database-url") && err.contains("AUTOMC_DSN"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn malformed_flags_exit_64() {
    let cases: [&[&str]; 3] = [
        &[
            "--waker-timeout",
            "soon",
            "--database-url",
            "postgres://x@h/db",
        ],
        &["--grpc-listen", "not-an-address"],
        &["--no-such-flag"],
    ];
    for args in cases {
        assert_eq!(syncd(args).status.code(), Some(64), "{args:?}");
    }
    let out = syncd(&[
        "--database-url",
        "postgres://u@h/db",
        "--waker-url",
        "ftp://x",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("waker"));
}

#[test]
fn help_lists_the_contract_flags_and_exits_0() {
    let out = syncd(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--database-url",
        "--grpc-listen",
        "--http-listen",
        "--grpc-token",
        "--waker-url",
        "--waker-token",
        "--waker-token-file",
        "--waker-poll-interval",
        "--waker-timeout",
        "--waker-ready-check",
    ] {
        assert!(help.contains(flag), "{flag} missing");
    }
}

#[test]
fn password_in_the_dsn_is_not_echoed_on_errors() {
    let out = syncd(&[
        "--database-url",
        "postgres://u:hunter2@h/db",
        "--waker-url",
        "ftp://x",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
}
