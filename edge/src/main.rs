//! `edge` binary: parse flags, set up logging, start, wait for SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use automc_telemetry::TelemetryConfig;
use clap::Parser;
use edge::Args;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration that cannot run (sysexits EX_USAGE).
const EXIT_CONFIG: i32 = 64;

async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_CONFIG,
            };
            std::process::exit(code);
        }
    };
    let telemetry = match automc_telemetry::init(&TelemetryConfig {
        service: "edge",
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
        default_filter: "info",
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("edge: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    tracing::info!(?config, "starting edge");
    let shutdown = CancellationToken::new();
    let running = match edge::start(config, shutdown.clone()).await {
        Ok(r) => r,
        Err(e @ (edge::Error::Config(_) | edge::Error::Bind { .. } | edge::Error::Sync(_))) => {
            eprintln!("edge: {e}");
            std::process::exit(EXIT_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    signalled().await;
    tracing::info!("signal received: draining");
    shutdown.cancel();
    tokio::select! {
        r = running.wait() => r?,
        () = signalled() => tracing::warn!("second signal: exiting without waiting"),
    }
    telemetry.shutdown();
    Ok(())
}
