//! `edge` binary: parse flags, set up logging, start, wait for SIGINT/SIGTERM.
//! The flags live in [`edge::config`]; exit codes are
//! [`automc_telemetry::process`]'s (bad configuration, including an address
//! that cannot be bound, exits 64).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use automc_telemetry::process::{clap_exit, config_exit, shutdown_signal, EXIT_CONFIG};
use automc_telemetry::TelemetryConfig;
use clap::Parser;
use edge::Args;
use tokio_util::sync::CancellationToken;

/// See the workspace `Cargo.toml`: freed memory goes back to the OS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let telemetry = match automc_telemetry::init(&TelemetryConfig {
        service: "edge",
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
        default_filter: "info",
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_exit("edge", &e),
    };
    tracing::info!(?config, "starting edge");
    let shutdown = CancellationToken::new();
    let running = match edge::start(config, shutdown.clone()).await {
        Ok(r) => r,
        Err(e @ (edge::Error::Config(_) | edge::Error::Bind { .. } | edge::Error::Sync(_))) => {
            return config_exit("edge", &e);
        }
        Err(e) => {
            tracing::error!(error = %e, "edge failed to start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("signal received: draining");
    shutdown.cancel();
    let code = tokio::select! {
        r = running.wait() => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "edge stopped with an error");
                ExitCode::FAILURE
            }
        },
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting without waiting");
            ExitCode::SUCCESS
        }
    };
    telemetry.shutdown();
    code
}
