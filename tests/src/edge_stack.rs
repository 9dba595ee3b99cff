// ============================================================================
// edge helpers (owned by the edge side; syncd helpers are above)
// ============================================================================

/// An edge running in-process on 127.0.0.1 port 0; drained when dropped.
pub struct EdgeHandle {
    pub listen_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    running: Option<edge::Running>,
}

/// Test defaults: every port 0, short timeouts, no admission limits (tests
/// open many connections from 127.0.0.1), fast sync backoff.
pub fn edge_test_config(syncd_urls: &[String]) -> edge::Config {
    edge::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http_listen: "127.0.0.1:0".parse().expect("addr"),
        grpc_listen: "127.0.0.1:0".parse().expect("addr"),
        syncd: syncd_urls.to_vec(),
        edge_id: "test-edge".into(),
        handshake_timeout: std::time::Duration::from_secs(2),
        connect_timeout: std::time::Duration::from_secs(1),
        hold_timeout: std::time::Duration::from_secs(10),
        drain_timeout: std::time::Duration::from_secs(10),
        sync_backoff_min: std::time::Duration::from_millis(50),
        sync_backoff_max: std::time::Duration::from_millis(500),
        status_cache_ttl: std::time::Duration::from_millis(200),
        limits: edge::limits::LimitsConfig {
            max_connections: 0,
            max_connections_per_ip: 0,
            rate_per_ip: 0.0,
            rate_burst: 0.0,
        },
        ..edge::Config::default()
    }
}

/// Start an edge against `syncd_urls`; `tweak` adjusts the test config.
pub async fn start_edge(
    syncd_urls: &[String],
    tweak: impl FnOnce(&mut edge::Config),
) -> EdgeHandle {
    let mut config = edge_test_config(syncd_urls);
    tweak(&mut config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = edge::start(config, shutdown.clone())
        .await
        .expect("edge starts");
    EdgeHandle {
        listen_addr: running.listen_addr,
        http_addr: running.http_addr,
        grpc_addr: running.grpc_addr,
        shutdown,
        running: Some(running),
    }
}

/// Poll `cond` every 20 ms until it holds or `within` passes.
pub async fn wait_until(what: &str, within: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl EdgeHandle {
    pub fn running(&self) -> &edge::Running {
        self.running.as_ref().expect("edge running")
    }

    /// Wait until the first snapshot is applied.
    pub async fn ready(&self) {
        wait_until("edge ready", std::time::Duration::from_secs(20), || {
            self.running().is_ready()
        })
        .await;
    }

    /// Wait until the table resolves `hostname` to `server` (`None` = no match).
    pub async fn wait_route(&self, hostname: &str, server: Option<&str>) {
        let host = automc_proto::normalize_player_hostname(hostname);
        wait_until(
            &format!("{hostname} → {server:?} on the edge"),
            std::time::Duration::from_secs(20),
            || {
                let t = self.running().table();
                t.table.lookup(&host).map(|m| m.route.server.as_str()) == server
            },
        )
        .await;
    }

    /// Wait until `server`'s route has `address` and `state`.
    pub async fn wait_route_state(&self, server: &str, address: &str, state: &str) {
        wait_until(
            &format!("{server} at {address} in state {state}"),
            std::time::Duration::from_secs(20),
            || {
                let t = self.running().table();
                t.table
                    .get(server)
                    .is_some_and(|r| r.address == address && r.state == state)
            },
        )
        .await;
    }

    /// Drain (as on SIGTERM) and wait until stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.running().metrics_text()
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
