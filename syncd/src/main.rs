//! `syncd` command line: parse flags (every flag also reads an environment
//! variable, including the original automc ones), set up logging, convert to
//! [`syncd::Config`], run until SIGINT/SIGTERM. The flags live in
//! [`syncd::config`]; exit codes are [`automc_telemetry::process`]'s (bad
//! configuration, including an address that cannot be bound, exits 64).
use std::process::ExitCode;
use std::time::Duration;

use automc_telemetry::process::{clap_exit, config_exit, shutdown_signal, EXIT_CONFIG};
use automc_telemetry::{LogFormat, Telemetry, TelemetryConfig};
use clap::Parser;
use syncd::config::{env_fallback, CheckArgs, Cli, Command, InspectArgs, MigrateArgs, ServeArgs};
use tokio_util::sync::CancellationToken;

/// Logs (and, for `serve`, span export); `None` after printing why it failed.
fn init_telemetry(log_format: LogFormat, otlp_endpoint: Option<String>) -> Option<Telemetry> {
    let config = TelemetryConfig {
        service: "syncd",
        log_format,
        otlp_endpoint,
        default_filter: "info",
    };
    match automc_telemetry::init(&config) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("syncd: {e}");
            None
        }
    }
}

/// See the workspace `Cargo.toml`: freed memory goes back to the OS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Some(Command::Serve(args)) => serve(*args).await,
            None => serve(cli.serve).await,
            Some(Command::Migrate(db)) => migrate(db).await,
            Some(Command::Check(args)) => check(args).await,
            Some(Command::Routes(args)) => inspect(args, syncd::inspect::Query::Routes).await,
            Some(Command::Edges(args)) => inspect(args, syncd::inspect::Query::Edges).await,
            Some(Command::Wakes(args)) => inspect(args, syncd::inspect::Query::Wakes).await,
            Some(Command::Servers(args)) => inspect(args, syncd::inspect::Query::Servers).await,
            Some(Command::Players(args)) => inspect(args, syncd::inspect::Query::Players).await,
        }
    })
}

fn config_error(e: &dyn std::error::Error) -> ExitCode {
    config_exit("syncd", e)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let Some(telemetry) = init_telemetry(args.db.log_format, args.otlp_endpoint.clone()) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let shutdown = CancellationToken::new();
    let running = match syncd::start(config, shutdown.clone()).await {
        Ok(r) => r,
        Err(e @ (syncd::Error::Config(_) | syncd::Error::Bind { .. })) => return config_error(&e),
        Err(e) => {
            tracing::error!(error = %e, "syncd failed to start");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    let code = match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "syncd stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn migrate(args: MigrateArgs) -> ExitCode {
    let Some(_telemetry) = init_telemetry(args.db.log_format, None) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let url = match args.db.database_url() {
        Ok(u) => u,
        Err(e) => return config_error(&e),
    };
    match syncd::migrate(&url).await {
        Ok(report) => {
            if args.verbose {
                for notice in &report.notices {
                    println!("postgres {notice}");
                }
            }
            println!(
                "migrated {}: {}",
                syncd::dsn::redact(&url),
                report.summary()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncd migrate failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let Some(_telemetry) = init_telemetry(args.db.log_format, None) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let url = match args.db.database_url() {
        Ok(u) => u,
        Err(e) => return config_error(&e),
    };
    println!("checking {}", syncd::dsn::redact(&url));
    let mut failed = false;
    match syncd::check(&url).await {
        Ok(findings) => {
            for f in findings {
                failed |= f.level == syncd::check::Level::Error;
                println!("{f}");
            }
        }
        Err(e) => {
            println!("ERROR cannot connect or query: {e}");
            failed = true;
        }
    }
    match env_fallback(args.waker_url, "AUTOMC_WAKER_URL") {
        None => println!("warn  no waker URL: wakes will fail with \"waker not configured\""),
        Some(url) => match probe_waker(&url).await {
            Ok(status) => println!("ok    waker {url} reachable (HTTP {status})"),
            Err(e) => {
                println!("ERROR waker {url} unreachable: {e}");
                failed = true;
            }
        },
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn inspect(args: InspectArgs, query: syncd::inspect::Query) -> ExitCode {
    let tls_ca_pem = match &args.tls_ca {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!("syncd: cannot read --tls-ca {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let target = syncd::inspect::Target {
        url: args.url,
        token: args.grpc_token.filter(|t| !t.is_empty()),
        tls_ca_pem,
    };
    match syncd::inspect::fetch(&target, query, args.json).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn probe_waker(url: &str) -> reqwest::Result<u16> {
    // Like the wake client: a redirect is reported, not followed.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client.get(url).send().await?;
    Ok(resp.status().as_u16())
}
