//! A throwaway Postgres cluster per test: `initdb` into a temp dir, start it
//! on a free port with its own unix socket dir, create a database, and tear
//! it all down in `Drop`. Every test gets its own cluster, so tests run in
//! parallel without sharing state.
//!
//! Works as root (initdb refuses to run as root, so the server binaries run
//! as the `postgres` user through `runuser`, and the temp dir is handed to
//! that user) and as an ordinary user (binaries run directly).
//!
//! The harness panics with a message naming what failed: it is test code.
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Name of the database every `TestPg` creates.
pub const DATABASE: &str = "automc";

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A running (or stopped) throwaway Postgres cluster.
pub struct TestPg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as_postgres: bool,
    running: bool,
}

impl TestPg {
    /// initdb, start on a free port, create database [`DATABASE`].
    pub async fn start() -> TestPg {
        let bin = find_bin_dir();
        let (dir, run_as_postgres) = make_temp_dir();
        let mut pg = TestPg {
            dir,
            bin,
            port: 0,
            run_as_postgres,
            running: false,
        };
        pg.init_cluster();
        // A free port can be taken by a parallel test between our probe and
        // Postgres binding it: retry with a fresh port.
        let mut last_err = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => {
                    pg.running = true;
                    last_err.clear();
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if !last_err.is_empty() {
            panic!(
                "postgres failed to start in {}: {last_err}",
                pg.dir.display()
            );
        }
        pg.create_database().await;
        pg
    }

    /// Port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// DSN of the test database (trust auth, no password).
    pub fn dsn(&self) -> String {
        self.dsn_for(DATABASE)
    }

    /// DSN of any database in this cluster.
    pub fn dsn_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A client on the test database, its connection driven by a spawned task.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.dsn()).await
    }

    /// Run a batch of SQL statements on the test database.
    pub async fn execute(&self, sql: &str) {
        let c = self.client().await;
        if let Err(e) = c.batch_execute(sql).await {
            panic!("SQL failed: {e} ({})\n{sql}", db_error_detail(&e));
        }
    }

    /// Stop (fast: disconnects clients) and start again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stop the server (fast shutdown; clients are disconnected).
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self.pg_ctl(&["stop", "-w", "-m", "fast"]);
        if !out.status.success() {
            panic!("pg_ctl stop failed: {}", output_text(&out));
        }
        self.running = false;
    }

    /// Start a stopped server on the same port.
    pub async fn start_again(&mut self) {
        if self.running {
            return;
        }
        // The old port may briefly be unavailable (TIME_WAIT does not block a
        // listener, but another test may have grabbed it): retry briefly.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.try_start() {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    panic!("postgres failed to restart on port {}: {e}", self.port)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.running = true;
    }

    fn init_cluster(&self) {
        let data = self.data_dir();
        let initdb = self.bin.join("initdb");
        let out = self
            .command(&initdb)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", initdb.display()));
        if !out.status.success() {
            panic!("initdb failed: {}", output_text(&out));
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        let log = self.dir.join("postgres.log");
        let out = self.pg_ctl_with(&[
            "start".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-l".as_ref(),
            log.as_os_str(),
            "-o".as_ref(),
            opts.as_ref(),
        ]);
        if out.status.success() {
            Ok(())
        } else {
            let log_tail = std::fs::read_to_string(&log)
                .map(|l| {
                    let lines: Vec<&str> = l.lines().collect();
                    lines[lines.len().saturating_sub(10)..].join("\n")
                })
                .unwrap_or_default();
            Err(format!("{}\nlog:\n{log_tail}", output_text(&out)))
        }
    }

    async fn create_database(&self) {
        let admin = connect(&self.dsn_for("postgres")).await;
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
        {
            panic!("CREATE DATABASE failed: {e} ({})", db_error_detail(&e));
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        self.pg_ctl_with(&args)
    }

    fn pg_ctl_with(&self, args: &[&std::ffi::OsStr]) -> Output {
        let pg_ctl = self.bin.join("pg_ctl");
        self.command(&pg_ctl)
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_ctl.display()))
    }

    /// A command running `program` as the `postgres` user when we are root.
    fn command(&self, program: &Path) -> Command {
        if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connect to a DSN and spawn the connection driver.
pub async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!("connect to {dsn} failed: {e}"),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn db_error_detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Highest `/usr/lib/postgresql/<v>/bin`, else the directory of `initdb` on PATH.
fn find_bin_dir() -> PathBuf {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok();
            let bin = e.path().join("bin");
            if let Some(v) = version {
                if bin.join("initdb").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, bin));
                }
            }
        }
    }
    if let Some((_, bin)) = best {
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return dir;
            }
        }
    }
    panic!("initdb not found in /usr/lib/postgresql/*/bin or PATH: install postgresql");
}

/// A fresh directory for the cluster, handed to `postgres` when we are root
/// (the flag says so).
fn make_temp_dir() -> (PathBuf, bool) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("automc-pg-{}-{id}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(dir.join("sock"))
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let is_root = std::fs::metadata(&dir)
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if is_root {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
        if !out.status.success() {
            panic!(
                "chown of {} to postgres failed (running as root needs a `postgres` user): {}",
                dir.display(),
                output_text(&out)
            );
        }
    }
    (dir, is_root)
}

/// Ports [`free_port`] handed out in this process.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Bind 127.0.0.1:0, read the port, release it. Never the same port twice
/// in one process: the kernel may offer a just-released port again, and
/// two children spawned at once (50 edges in the fleet bench) would then
/// race for it. Another process can still take it before the child binds;
/// callers retry a child that fails to start (`procs::Proc`).
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    // Hold each probe until a fresh port turns up, so the kernel cannot
    // offer the same one again in this loop.
    let mut probes = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = l
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr of probe listener: {e}"))
            .port();
        if !handed.contains(&port) || probes.len() >= 64 {
            handed.push(port);
            return port;
        }
        probes.push(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cluster_starts_restarts_and_answers_queries() {
        let mut pg = TestPg::start().await;
        let c = pg.client().await;
        let row = c.query_one("SELECT 1::int4", &[]).await.expect("select");
        assert_eq!(row.get::<_, i32>(0), 1);
        pg.restart().await;
        let c = pg.client().await;
        let row = c
            .query_one("SELECT current_database()", &[])
            .await
            .expect("select");
        assert_eq!(row.get::<_, String>(0), DATABASE);
    }
}
