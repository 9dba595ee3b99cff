//! The container images of deploy/docker, built and run with Podman (as root,
//! the way CI runs), for the tests that check what an operator gets.
//!
//! - The base: `deploy/docker/debian-base.sh` makes it from Debian's packages
//!   (no image registry here) and keeps it, with its tarball under
//!   `target/containers/`, so only the first run pays for debootstrap.
//! - The product images: the Dockerfile's `-prebuilt` targets, fed with the
//!   debug binaries `cargo test` builds anyway (same code, no second release
//!   build of the workspace), staged as `target/release/*` in a small build
//!   context of their own (the layout the Dockerfile expects; the repository's
//!   `target/` is never sent to the engine).
//! - Every container, image, network and volume a test creates carries the
//!   run's unique name and is removed by [`Cleanup`]'s `Drop`, also when the
//!   test fails. Kept on purpose, as caches like `target/`: the base image,
//!   the Dockerfile's `runtime` stage and the stand-in Postgres and HAProxy
//!   images of `tests/containers/` (each tagged with a hash of its inputs,
//!   rebuilt only when those change).
//!
//! Podman runs with `runc` (crun refuses hybrid cgroups), the cgroupfs manager
//! and explicit ulimits (the engine's default, the host's hard limit, is
//! refused in some sandboxes), all from a `containers.conf` of our own
//! (`CONTAINERS_CONF`), so podman-compose gets the same settings.
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::procs::bin_dir;
use crate::stack::DEADLINE;

/// Name of the base image made by `deploy/docker/debian-base.sh`: its tag
/// carries a hash of the script, so a changed script makes a new base.
pub fn base_image_name() -> String {
    let script = std::fs::read(repo().join("deploy/docker/debian-base.sh")).unwrap_or_default();
    format!(
        "localhost/automc-ci-debian:bookworm-slim-{}",
        short_hex(&Sha256::digest(&script))
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// `target/containers/`: the base tarball, build contexts, locks.
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let dir = target.join("containers");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A name unique to this test run: `<prefix>-<pid>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program` as root: directly when we are root, else through `sudo -n`.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "--preserve-env=CONTAINERS_CONF,PATH", program]);
        c
    }
}

/// The `containers.conf` every podman call of the tests uses (written once
/// per test process; parallel processes write the same text).
pub fn containers_conf() -> PathBuf {
    static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONF.get_or_init(write_containers_conf).clone()
}

fn write_containers_conf() -> PathBuf {
    // As many descriptors as the host allows (compose.yaml asks for 65536;
    // an engine cannot give more than its own hard limit).
    let nofile = container_nofile();
    let text = format!(
        "# Written by tests/src/containers.rs.\n\
         [containers]\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n"
    );
    let path = cache_dir().join("containers.conf");
    let tmp = cache_dir().join(format!("containers.conf.{}", std::process::id()));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    path
}

/// The highest `RLIMIT_NOFILE` a container can get here (what
/// [`containers_conf`] gives every container).
pub fn container_nofile() -> u64 {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    hard.min(65_536)
}

/// A `podman-compose` command with the tests' `containers.conf`.
pub fn podman_compose() -> Command {
    let mut c = as_root("podman-compose");
    c.env("CONTAINERS_CONF", containers_conf());
    c.kill_on_drop(true);
    c
}

/// A `podman` command with the tests' `containers.conf`.
pub fn podman() -> Command {
    let mut c = as_root("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c.kill_on_drop(true);
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Run `cmd`, bounded by `limit`; its output (whatever the exit status).
pub async fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let fut = cmd.output();
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: cannot run: {e}"),
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// Run `podman args`, which must exit 0; its stdout.
pub async fn podman_ok(args: &[&str]) -> String {
    let mut c = podman();
    c.args(args);
    let what = format!("podman {}", args.join(" "));
    let out = output_within(c, Duration::from_secs(600), &what).await;
    if !out.status.success() {
        panic!("{what} failed: {}", text(&out));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `podman args`, exit status and combined output, bounded by [`DEADLINE`].
pub async fn podman_try(args: &[&str]) -> (bool, String) {
    let mut c = podman();
    c.args(args);
    let out = output_within(c, DEADLINE, &format!("podman {}", args.join(" "))).await;
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An exclusive lock on `target/containers/<name>.lock` (builds and image
/// removals of parallel test binaries do not interleave: a removal could
/// otherwise take a cached layer another build is about to use).
pub async fn lock(name: &str) -> std::fs::File {
    let path = cache_dir().join(format!("{name}.lock"));
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.lock()
            .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        f
    })
    .await
    .expect("lock task")
}

/// The base image, made once by `deploy/docker/debian-base.sh`.
pub async fn base_image() -> String {
    let image = base_image_name();
    let mut c = as_root("bash");
    c.arg(repo().join("deploy/docker/debian-base.sh"))
        .arg(&image)
        .arg(cache_dir())
        .env("CONTAINERS_CONF", containers_conf());
    // Cold: debootstrap downloads and unpacks ~100 packages.
    let out = output_within(c, Duration::from_secs(900), "debian-base.sh").await;
    if !out.status.success() {
        panic!("deploy/docker/debian-base.sh failed: {}", text(&out));
    }
    image
}

/// Names of the three product images of one run.
#[derive(Debug, Clone)]
pub struct Images {
    pub syncd: String,
    pub edge: String,
    pub demo_backend: String,
}

/// Everything a test created in Podman, removed on drop (also on panic).
#[derive(Default)]
pub struct Cleanup {
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
    dirs: Mutex<Vec<PathBuf>>,
    /// (podman-compose project, compose files) to `down -v`.
    compose: Mutex<Vec<(String, Vec<PathBuf>)>>,
}

impl Cleanup {
    pub fn container(&self, name: &str) {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
    }

    pub fn image(&self, name: &str) {
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
    }

    /// A directory or file to delete.
    pub fn dir(&self, dir: &Path) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.to_owned());
    }

    pub fn compose(&self, project: &str, files: &[PathBuf]) {
        self.compose
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((project.to_owned(), files.to_vec()));
    }
}

/// Drop runs outside any runtime guarantee (a panicking test), so it uses
/// blocking commands.
fn blocking_podman(args: &[&str]) -> Option<Output> {
    let mut c = if is_root() {
        std::process::Command::new("podman")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", "--preserve-env=CONTAINERS_CONF,PATH", "podman"]);
        c
    };
    c.env("CONTAINERS_CONF", containers_conf()).args(args);
    c.output().ok()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let compose = std::mem::take(&mut *self.compose.lock().unwrap_or_else(|p| p.into_inner()));
        for (project, files) in compose {
            let mut c = if is_root() {
                std::process::Command::new("podman-compose")
            } else {
                let mut c = std::process::Command::new("sudo");
                c.args([
                    "-n",
                    "--preserve-env=CONTAINERS_CONF,PATH",
                    "podman-compose",
                ]);
                c
            };
            c.env("CONTAINERS_CONF", containers_conf())
                .args(["-p", &project]);
            for f in &files {
                c.arg("-f").arg(f);
            }
            let _ = c.args(["down", "-v", "-t", "0"]).output();
            // Whatever compose left (a failed `up` may leave some behind).
            let label = format!("label=io.podman.compose.project={project}");
            if let Some(out) = blocking_podman(&["ps", "-aq", "--filter", &label]) {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-t", "0"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = blocking_podman(&args);
                }
            }
            for kind in ["network", "volume"] {
                if let Some(out) = blocking_podman(&[kind, "ls", "-q", "--filter", &label]) {
                    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = blocking_podman(&[kind, "rm", "-f", id]);
                    }
                }
            }
        }
        let containers =
            std::mem::take(&mut *self.containers.lock().unwrap_or_else(|p| p.into_inner()));
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(containers.iter().map(String::as_str));
            let _ = blocking_podman(&args);
        }
        let images = std::mem::take(&mut *self.images.lock().unwrap_or_else(|p| p.into_inner()));
        if !images.is_empty() {
            let path = cache_dir().join("podman-build.lock");
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ok();
            if let Some(f) = &lock {
                let _ = f.lock();
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(images.iter().map(String::as_str));
            let _ = blocking_podman(&args);
            drop(lock);
        }
        for path in std::mem::take(&mut *self.dirs.lock().unwrap_or_else(|p| p.into_inner())) {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Copy (hard link when possible) `from` to `to`.
fn stage(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// `podman build` of one target of deploy/docker/Dockerfile from `context`.
async fn build_target(context: &Path, target: &str, tag: &str, base: &str) {
    let dockerfile = repo().join("deploy/docker/Dockerfile");
    let base_arg = format!("BASE_IMAGE={base}");
    podman_ok(&[
        "build",
        "--pull=never",
        // Podman's default OCI format would drop the HEALTHCHECK.
        "--format",
        "docker",
        "--build-arg",
        &base_arg,
        "-f",
        dockerfile.to_str().expect("utf-8 path"),
        "--target",
        target,
        "-t",
        tag,
        context.to_str().expect("utf-8 path"),
    ])
    .await;
}

/// Build the syncd, edge and demo-backend images of the `-prebuilt` targets
/// from this build's binaries (`demo_backend`: the test's
/// `CARGO_BIN_EXE_automc-demo-backend`), tagged `localhost/automc-*:<run>`
/// (the names compose.yaml and the Kubernetes manifests use).
pub async fn build_product_images(run: &str, demo_backend: &Path, cleanup: &Cleanup) -> Images {
    let base = &base_image().await;
    let bins = bin_dir().await;
    let ctx = cache_dir().join(format!("context-{run}"));
    cleanup.dir(&ctx);
    stage(&bins.join("syncd"), &ctx.join("target/release/syncd"));
    stage(&bins.join("edge"), &ctx.join("target/release/edge"));
    stage(
        demo_backend,
        &ctx.join("target/release/automc-demo-backend"),
    );
    stage(
        &repo().join("deploy/docker/automc-healthcheck.sh"),
        &ctx.join("deploy/docker/automc-healthcheck.sh"),
    );
    let images = Images {
        syncd: format!("localhost/automc-syncd:{run}"),
        edge: format!("localhost/automc-edge:{run}"),
        demo_backend: format!("localhost/automc-demo-backend:{run}"),
    };
    let _lock = lock("podman-build").await;
    // The Dockerfile's `runtime` stage (apt-get from the mirror, the user, the
    // health check script), kept under a tag of its own so the layers outlive
    // this run's images: the next run builds only the binaries' layers.
    let mut h = Sha256::new();
    h.update(std::fs::read(repo().join("deploy/docker/Dockerfile")).unwrap_or_default());
    h.update(std::fs::read(repo().join("deploy/docker/automc-healthcheck.sh")).unwrap_or_default());
    h.update(podman_ok(&["image", "inspect", "--format", "{{.Id}}", base]).await);
    let runtime = format!("localhost/automc-ci-runtime:{}", short_hex(&h.finalize()));
    if !podman_try(&["image", "exists", &runtime]).await.0 {
        build_target(&ctx, "runtime", &runtime, base).await;
    }
    for (target, tag) in [
        ("syncd-prebuilt", &images.syncd),
        ("edge-prebuilt", &images.edge),
        ("demo-backend-prebuilt", &images.demo_backend),
    ] {
        cleanup.image(tag);
        build_target(&ctx, target, tag, base).await;
    }
    images
}

/// The first 8 bytes of a digest, in hex (an image tag).
fn short_hex(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A stand-in image from `tests/containers/<name>.Dockerfile` (the context is
/// `tests/containers/`), built on the base once and kept: its tag is a hash of
/// the directory's files and the base image's id.
pub async fn fixture_image(name: &str) -> String {
    let base = &base_image().await;
    let dir = repo().join("tests/containers");
    let mut h = Sha256::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in &files {
        h.update(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
        h.update(std::fs::read(f).unwrap_or_default());
    }
    h.update(podman_ok(&["image", "inspect", "--format", "{{.Id}}", base]).await);
    let image = format!("localhost/automc-ci-{name}:{}", short_hex(&h.finalize()));
    let _lock = lock("podman-build").await;
    let (exists, _) = podman_try(&["image", "exists", &image]).await;
    if !exists {
        let base_arg = format!("BASE_IMAGE={base}");
        let dockerfile = dir.join(format!("{name}.Dockerfile"));
        podman_ok(&[
            "build",
            "--pull=never",
            "--format",
            "docker",
            "--build-arg",
            &base_arg,
            "-f",
            dockerfile.to_str().expect("utf-8 path"),
            "-t",
            &image,
            dir.to_str().expect("utf-8 path"),
        ])
        .await;
    }
    image
}

/// `podman image inspect` of `image`, parsed.
pub async fn inspect_image(image: &str) -> serde_json::Value {
    let out = podman_ok(&["image", "inspect", image]).await;
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect {image}: {e}: {out}"));
    v[0].clone()
}

/// `podman container inspect` of `name`, parsed.
pub async fn inspect_container(name: &str) -> serde_json::Value {
    let out = podman_ok(&["container", "inspect", name]).await;
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect {name}: {e}: {out}"));
    v[0].clone()
}

/// Poll the image's HEALTHCHECK (`podman healthcheck run`) until it passes.
pub async fn wait_healthy(name: &str) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, last) = podman_try(&["healthcheck", "run", name]).await;
        if ok {
            return;
        }
        if tokio::time::Instant::now() > end {
            let (_, logs) = podman_try(&["logs", name]).await;
            panic!("{name} not healthy within 60 s: {last}\n--- logs\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until container `name` has exited; its exit code.
pub async fn wait_exit(name: &str, limit: Duration) -> i64 {
    let mut c = podman();
    c.args(["wait", name]);
    let out = output_within(c, limit, &format!("podman wait {name}")).await;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    code.parse()
        .unwrap_or_else(|_| panic!("podman wait {name}: {}", text(&out)))
}

/// The uid (real, effective, saved, fs) of the container's main process,
/// read from the host's /proc.
pub async fn main_process_uids(name: &str) -> Vec<u32> {
    let pid = inspect_container(name).await["State"]["Pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: no State.Pid"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status of {name}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_else(|| panic!("no Uid line in /proc/{pid}/status"))
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect()
}
