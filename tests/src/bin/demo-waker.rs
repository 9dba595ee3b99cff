//! A demo waker for the quickstart: speaks the waker contract
//! (`POST /servers/{name}/start`, `GET /servers/{name}`) for a fixed set of
//! local demo servers. "Starting" a server means: wait `--boot-delay` (a
//! stand-in for a real server's start time), then serve a demo Minecraft
//! backend in this process on the server's address. With `--database-url` it
//! also sets `servers.state` to `starting` and then `running`, the way a real
//! control plane would, so the change shows up through syncd's LISTEN.
//! Local processes only; not a production waker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context};
use automc_tests::mc::{BackendOptions, LoginMode, McBackend};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "automc-demo-waker",
    about = "Demo waker for trying automc: starts local demo servers on request"
)]
struct Args {
    /// Address to serve the waker HTTP API on.
    #[arg(
        long,
        env = "AUTOMC_DEMO_WAKER_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    listen: SocketAddr,
    /// A server this waker can start, as NAME=HOST:PORT (repeatable).
    #[arg(long = "server", value_parser = parse_server, required = true)]
    servers: Vec<(String, SocketAddr)>,
    /// How long a server takes to "boot" after a start request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    boot_delay: Duration,
    /// Postgres DSN: when set, `servers.state` follows each demo server
    /// (`starting`, then `running`).
    #[arg(long, env = "AUTOMC_DEMO_WAKER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Require this `X-API-Key` on every request.
    #[arg(long, env = "AUTOMC_DEMO_WAKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn parse_server(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=HOST:PORT, got {s:?}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address in {s:?}: {e}"))?;
    Ok((name.to_owned(), addr))
}

enum Phase {
    Stopped,
    Starting,
    /// The demo backend lives as long as this phase does.
    Running {
        _backend: McBackend,
    },
}

struct Server {
    address: SocketAddr,
    phase: Phase,
}

struct Demo {
    servers: Mutex<HashMap<String, Server>>,
    boot_delay: Duration,
    database_url: Option<String>,
    token: Option<String>,
}

fn lock(demo: &Demo) -> MutexGuard<'_, HashMap<String, Server>> {
    demo.servers.lock().unwrap_or_else(|p| p.into_inner())
}

impl Demo {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        match &self.token {
            None => true,
            Some(want) => headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|got| got == want),
        }
    }

    /// Best effort: the demo keeps working without the database.
    async fn set_state(&self, name: &str, state: &str) {
        let Some(dsn) = &self.database_url else {
            return;
        };
        let result = async {
            let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .execute(
                    "UPDATE servers SET state = $1 WHERE name = $2",
                    &[&state, &name],
                )
                .await
        }
        .await;
        if let Err(e) = result {
            eprintln!("automc-demo-waker: could not set {name} to {state}: {e}");
        }
    }
}

async fn boot(demo: Arc<Demo>, name: String, address: SocketAddr) {
    demo.set_state(&name, "starting").await;
    tokio::time::sleep(demo.boot_delay).await;
    let opts = BackendOptions {
        motd: format!("{name}: woken up by the automc demo waker"),
        login: LoginMode::Disconnect(format!(
            "You joined {name}: it was asleep and automc woke it up"
        )),
        ..BackendOptions::default()
    };
    match McBackend::start_on(address, opts).await {
        Ok(backend) => {
            println!("automc-demo-waker: {name} is running on {address}");
            if let Some(s) = lock(&demo).get_mut(&name) {
                s.phase = Phase::Running { _backend: backend };
            }
            demo.set_state(&name, "running").await;
        }
        Err(e) => {
            eprintln!("automc-demo-waker: {name} failed to start on {address}: {e}");
            if let Some(s) = lock(&demo).get_mut(&name) {
                s.phase = Phase::Stopped;
            }
            demo.set_state(&name, "stopped").await;
        }
    }
}

async fn start_server(
    State(demo): State<Arc<Demo>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !demo.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "bad X-API-Key").into_response();
    }
    let address = {
        let mut servers = lock(&demo);
        let Some(server) = servers.get_mut(&name) else {
            return (StatusCode::NOT_FOUND, "no such demo server").into_response();
        };
        match server.phase {
            Phase::Running { .. } => return (StatusCode::OK, "already running").into_response(),
            Phase::Starting => return (StatusCode::CONFLICT, "already starting").into_response(),
            Phase::Stopped => server.phase = Phase::Starting,
        }
        server.address
    };
    println!(
        "automc-demo-waker: starting {name} (boots in {})",
        humantime::format_duration(demo.boot_delay)
    );
    tokio::spawn(boot(demo.clone(), name, address));
    (StatusCode::ACCEPTED, "starting").into_response()
}

async fn server_status(
    State(demo): State<Arc<Demo>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !demo.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "bad X-API-Key").into_response();
    }
    let servers = lock(&demo);
    let Some(server) = servers.get(&name) else {
        return (StatusCode::NOT_FOUND, "no such demo server").into_response();
    };
    let state = match server.phase {
        Phase::Stopped => "stopped",
        Phase::Starting => "starting",
        Phase::Running { .. } => "running",
    };
    let body = serde_json::json!({"state": state, "address": server.address.to_string()});
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = args
        .servers
        .into_iter()
        .map(|(name, address)| {
            (
                name,
                Server {
                    address,
                    phase: Phase::Stopped,
                },
            )
        })
        .collect();
    let demo = Arc::new(Demo {
        servers: Mutex::new(servers),
        boot_delay: args.boot_delay,
        database_url: args.database_url,
        token: args.token,
    });
    let app = Router::new()
        .route("/servers/{name}/start", post(start_server))
        .route("/servers/{name}", get(server_status))
        .with_state(demo);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!(
        "automc-demo-waker listening on {}",
        listener.local_addr().map_err(|e| anyhow!(e))?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
