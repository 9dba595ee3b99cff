//! The edge command line as an operator meets it: help, and a bad
//! configuration exits 64 with a readable message instead of a panic.
use std::process::Command;

fn edge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .env_remove("EDGE_SYNCD")
        .output()
        .expect("run edge")
}

#[test]
fn help_describes_the_player_and_sync_flags() {
    let out = edge(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--syncd",
        "--hold-timeout",
        "--proxy-protocol-trusted",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn missing_syncd_exits_64_with_a_clear_message() {
    let out = edge(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--syncd"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn malformed_cidr_exits_64() {
    let out = edge(&[
        "--syncd",
        "http://127.0.0.1:1",
        "--proxy-protocol-trusted",
        "10.0.0.0/99",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
