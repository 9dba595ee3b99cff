//! A stand-in Minecraft server for the quickstart: answers server-list pings with a MOTD and
//! echoes logged-in connections. Not a game server.

use std::net::SocketAddr;

use automc_tests::mc::{BackendOptions, LoginMode, McBackend};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "automc-demo-backend",
    about = "Minimal Minecraft-protocol backend for trying automc"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AUTOMC_DEMO_LISTEN", default_value = "127.0.0.1:25566")]
    listen: SocketAddr,
    /// Text shown in the server list.
    #[arg(long, env = "AUTOMC_DEMO_MOTD", default_value = "automc demo backend")]
    motd: String,
    /// Expect a PROXY protocol header on each connection.
    #[arg(long, env = "AUTOMC_DEMO_EXPECT_PROXY_PROTOCOL")]
    expect_proxy_protocol: bool,
    /// Message sent to players who log in (they are disconnected with it).
    #[arg(
        long,
        env = "AUTOMC_DEMO_LOGIN_MESSAGE",
        default_value = "automc demo backend: routing works"
    )]
    login_message: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = BackendOptions {
        motd: args.motd,
        expect_proxy_header: args.expect_proxy_protocol,
        login: LoginMode::Disconnect(args.login_message),
        ..BackendOptions::default()
    };
    let backend = McBackend::start_on(args.listen, opts).await?;
    println!("automc-demo-backend listening on {}", backend.addr());
    // Ctrl-C in a terminal, SIGTERM from `docker stop` / `podman stop`: as a
    // container's PID 1 an unhandled SIGTERM is ignored, and the engine would
    // wait out its stop timeout and SIGKILL.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    backend.stop();
    Ok(())
}
