//! syncd and edge as real child processes, for the fault tests that kill
//! them with SIGKILL (an in-process server can only be cancelled, which is
//! a clean stop, not a crash).
//!
//! The binaries come from the same `target/` as the test (built on demand
//! when the test runs alone). Every child is killed when its handle drops.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::pg::free_port;
use crate::stack::{eventually, http_get, metric_sample, DEADLINE};

/// `target/<profile>/`, where cargo puts syncd and edge; builds them when
/// missing.
pub async fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    if !dir.join("syncd").exists() || !dir.join("edge").exists() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "syncd", "-p", "edge"])
            .current_dir(repo)
            .status()
            .await
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p syncd -p edge failed");
    }
    dir
}

/// Every line a child wrote to stdout and stderr, for log assertions.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Lines from the `from`-th on (to follow a log without rescanning it).
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    fn capture(&self, child: &mut Child) {
        if let Some(out) = child.stdout.take() {
            self.pump(BufReader::new(out));
        }
        if let Some(err) = child.stderr.take() {
            self.pump(BufReader::new(err));
        }
    }

    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(&self, r: BufReader<R>) {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut r = r.lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
    }
}

/// A syncd or edge child process.
pub struct Proc {
    child: Child,
    pub http_addr: SocketAddr,
    /// syncd: its gRPC address; edge: its player port.
    pub main_addr: SocketAddr,
    /// What `{grpc}` stood for in the args (the edge's `EdgeAdmin` port).
    pub grpc_addr: SocketAddr,
    pub output: Output,
}

/// Three fresh loopback addresses: `{main}`, `{http}`, `{grpc}`.
/// `args` with the `{main}`, `{main_port}`, `{http}` and `{grpc}` holes filled.
fn fill_addrs(args: &[String], [main_addr, http_addr, grpc_addr]: [SocketAddr; 3]) -> Vec<String> {
    args.iter()
        .map(|a| {
            a.replace("{main}", &main_addr.to_string())
                .replace("{main_port}", &main_addr.port().to_string())
                .replace("{http}", &http_addr.to_string())
                .replace("{grpc}", &grpc_addr.to_string())
        })
        .collect()
}

/// The command for child `bin` of `dir`: output captured, killed on drop.
fn command(dir: &std::path::Path, bin: &str, args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(dir.join(bin));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn fresh_addrs() -> [SocketAddr; 3] {
    [(); 3].map(|()| SocketAddr::from(([127, 0, 0, 1], free_port())))
}

impl Proc {
    /// Start `bin` with `args`; `{main}`, `{http}` and `{grpc}` in args are
    /// replaced by free loopback addresses, all three picked again when the
    /// child fails to start (another process took a port first),
    /// `{main_port}` by the port of `{main}` alone (to listen on `0.0.0.0`
    /// while the test dials 127.0.0.1).
    pub async fn spawn(bin: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        Self::spawn_from(&bin_dir().await, bin, args, env).await
    }

    /// [`Proc::spawn`] with the binary taken from `dir` (a bench runs from
    /// `target/release/` itself).
    pub async fn spawn_from(
        dir: &std::path::Path,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let [main_addr, http_addr, grpc_addr] = fresh_addrs();
            match Self::try_spawn(dir, bin, args, env, [main_addr, http_addr, grpc_addr]).await {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("{bin} failed to start: {last}");
    }

    /// Start `bin` on fresh addresses without waiting for it to answer: a
    /// bench spawning a crowd at once, whose polling of each child would
    /// take CPU from the children it measures. The caller learns it is up
    /// some other way, and asks [`Proc::exited`] when it does not come up.
    pub fn spawn_unwatched(
        dir: &std::path::Path,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Proc {
        let [main_addr, http_addr, grpc_addr] = fresh_addrs();
        let args = fill_addrs(args, [main_addr, http_addr, grpc_addr]);
        let mut child = command(dir, bin, &args, env)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let output = Output::default();
        output.capture(&mut child);
        Proc {
            child,
            http_addr,
            main_addr,
            grpc_addr,
            output,
        }
    }

    /// How it ended and what it printed, once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        Some(format!("exited with {status}: {}", self.output.text()))
    }

    /// Start again on a known main address (a restarted syncd keeps its URL).
    pub async fn spawn_on(
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
        main_addr: SocketAddr,
    ) -> Proc {
        let dir = bin_dir().await;
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let [_, http_addr, grpc_addr] = fresh_addrs();
            match Self::try_spawn(&dir, bin, args, env, [main_addr, http_addr, grpc_addr]).await {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("{bin} failed to start on {main_addr}: {last}");
    }

    async fn try_spawn(
        dir: &std::path::Path,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
        [main_addr, http_addr, grpc_addr]: [SocketAddr; 3],
    ) -> Result<Proc, String> {
        let args = fill_addrs(args, [main_addr, http_addr, grpc_addr]);
        let mut child = command(dir, bin, &args, env)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let output = Output::default();
        output.capture(&mut child);
        let mut p = Proc {
            child,
            http_addr,
            main_addr,
            grpc_addr,
            output,
        };
        // Up once /healthz answers from a socket this child listens on (not
        // another process that got the port first: this child then exits
        // on its failed bind, and is retried on fresh ports).
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("exited with {status}: {}", p.output.text()));
            }
            if matches!(http_get(http_addr, "/healthz").await, Ok((200, _)))
                && p.pid().is_some_and(|pid| listens_on(pid, http_addr.port()))
            {
                return Ok(p);
            }
            if tokio::time::Instant::now() > end {
                return Err(format!("no /healthz within {DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_ready_within(DEADLINE).await;
    }

    /// [`Proc::wait_ready`] with a deadline of the caller's (a bench loading
    /// a 1M-route table).
    pub async fn wait_ready_within(&self, deadline: Duration) {
        let addr = self.http_addr;
        eventually("child /readyz to answer 200", deadline, || async move {
            matches!(http_get(addr, "/readyz").await, Ok((200, _)))
        })
        .await;
    }

    /// `/metrics` text (empty when unreachable).
    pub async fn metrics(&self) -> String {
        http_get(self.http_addr, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// One sample of `/metrics`, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.metrics().await, sample)
    }

    /// SIGKILL and reap: no drain, no goodbye, like a crash or the OOM killer.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(DEADLINE, self.child.wait()).await;
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Start attempts on fresh ports before a child counts as failing to start.
const ATTEMPTS: usize = 8;

/// Whether process `pid` holds a listening TCP socket on `port` (Linux
/// `/proc`; true where that cannot be read, so other systems fall back to
/// `/healthz` alone).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let hex_port = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|table| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|row| {
                // sl local_address rem_address st ... inode
                let f: Vec<&str> = row.split_whitespace().collect();
                f.len() > 9
                    && f[1].ends_with(&hex_port)
                    && f[3] == "0A"
                    && inodes.iter().any(|i| i == f[9])
            })
    })
}

/// Args for a syncd child on `dsn` (gRPC on `{main}`, HTTP on `{http}`).
pub fn syncd_args(dsn: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "serve",
        "--database-url",
        dsn,
        "--grpc-listen",
        "{main}",
        "--http-listen",
        "{http}",
        "--heartbeat-interval",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Args for an edge child syncing from `syncd_url` (players on `{main}`,
/// HTTP on `{http}`, `EdgeAdmin` on `{grpc}`), without admission
/// limits (tests open many connections from one address).
pub fn edge_args(syncd_url: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--listen",
        "{main}",
        "--http-listen",
        "{http}",
        "--grpc-listen",
        "{grpc}",
        "--syncd",
        syncd_url,
        "--handshake-timeout",
        "5s",
        "--connect-timeout",
        "5s",
        "--drain-timeout",
        "1s",
        "--max-connections",
        "0",
        "--max-connections-per-ip",
        "0",
        "--rate-per-ip",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Resident memory of process `pid` in MiB (NaN when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) process `pid` used so far (NaN when
/// unreadable). Assumes the usual 100 clock ticks per second.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}
