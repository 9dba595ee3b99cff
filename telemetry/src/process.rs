//! Process conventions both binaries share, so `syncd` and `edge` exit and
//! stop the same way:
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | stopped by SIGTERM/SIGINT after draining, or `--help`/`--version` |
//! | 64 ([`EXIT_CONFIG`]) | the configuration cannot run: a bad flag or value, a missing secret file, an address that cannot be bound |
//! | 1 | failed while running (a server task ended with an error or panicked) |
use std::process::ExitCode;

/// sysexits `EX_USAGE`: the configuration cannot run.
pub const EXIT_CONFIG: u8 = 64;

/// Print a clap error (or the help/version text it carries) and pick the
/// exit code: 0 for help and version, [`EXIT_CONFIG`] otherwise.
pub fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CONFIG),
    }
}

/// Print `binary: error` (with its sources) and exit [`EXIT_CONFIG`].
pub fn config_exit(binary: &str, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("{binary}: {}", chain(e));
    ExitCode::from(EXIT_CONFIG)
}

/// An error and its sources on one line, `outer: inner: root`, skipping a
/// source whose text the outer message already contains.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn chain_names_every_source_once() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(chain(&e), "outer: root cause");
        let e = Repeats(std::io::Error::other("root cause"));
        assert_eq!(chain(&e), "wrapped: root cause");
    }
}
