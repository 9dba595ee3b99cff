//! A tiny Minecraft client for trying automc from a terminal: a server-list
//! ping (`status`) or a login (`join`) that prints what a player would see.
//! Not a game client: a login ends at the first answer (the demo backends
//! disconnect logged-in players with a message).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use automc_tests::mc::{login_with, status_ping, DEFAULT_PROTOCOL};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "automc-demo-client",
    about = "Ping or join a Minecraft server through automc, from a terminal"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Server-list ping: print the MOTD, version, players and latency.
    Status(Target),
    /// Log in and print what the server answers (waits while a sleeping server wakes).
    Join {
        #[command(flatten)]
        target: Target,
        /// Player name sent in Login Start.
        #[arg(long, default_value = "demo_player")]
        name: String,
        /// Give up after this long without an answer.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(clap::Args)]
struct Target {
    /// Where to connect (the edge), HOST:PORT.
    address: String,
    /// Server address to put in the handshake (default: the host part of ADDRESS).
    #[arg(long)]
    hostname: Option<String>,
    /// Protocol version to announce.
    #[arg(long, default_value_t = DEFAULT_PROTOCOL)]
    protocol: i32,
}

impl Target {
    async fn resolve(&self) -> anyhow::Result<(SocketAddr, String)> {
        let addr = tokio::net::lookup_host(&self.address)
            .await
            .with_context(|| format!("cannot resolve {}", self.address))?
            .next()
            .with_context(|| format!("{} has no address", self.address))?;
        let host = match &self.hostname {
            Some(h) => h.clone(),
            None => match self.address.rsplit_once(':') {
                Some((h, _)) => h.trim_matches(['[', ']']).to_owned(),
                None => self.address.clone(),
            },
        };
        Ok((addr, host))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Status(t) => {
            let (addr, host) = t.resolve().await?;
            let reply = status_ping(addr, &host, t.protocol)
                .await
                .with_context(|| format!("status ping to {addr} as {host}"))?;
            let v = reply.value();
            println!("motd:    {}", reply.motd());
            println!(
                "version: {} (protocol {})",
                v["version"]["name"].as_str().unwrap_or("?"),
                reply.protocol().unwrap_or(-1)
            );
            println!(
                "players: {}/{}",
                v["players"]["online"].as_i64().unwrap_or(0),
                v["players"]["max"].as_i64().unwrap_or(0)
            );
            println!("latency: {} µs", reply.latency.as_micros());
        }
        Cmd::Join {
            target,
            name,
            timeout,
        } => {
            let (addr, host) = target.resolve().await?;
            println!("joining {host} through {addr} as {name} (a sleeping server takes a while)…");
            let mut conn = login_with(addr, target.protocol, &host, &name, &[])
                .await
                .with_context(|| format!("connect to {addr}"))?;
            match conn.read_disconnect_within(timeout).await {
                Ok(message) => println!("server says: {message}"),
                Err(e) => bail!("no message from the server: {e:#}"),
            }
        }
    }
    Ok(())
}
