//! Splicing a player to a backend: two pumps, one per direction, with the
//! half-close carried through (EOF from one side becomes a write shutdown on
//! the other, and the opposite direction keeps flowing until it ends too).
//!
//! On Linux the bytes move with `splice(2)` through a pipe, socket to pipe
//! to socket, without ever entering user space. A pump waits for
//! readability holding nothing, then borrows a pipe from the edge's
//! [`PipePool`] for as long as bytes flow and gives it back, empty, when the
//! socket runs dry: an idle session holds no pipe and no extra descriptor,
//! and the pool never grows past the most sessions ever active at once
//! (`--splice-pipes`). When the pool is exhausted, splicing is off
//! (`--splice-pipes 0`) or the OS is not Linux, a burst is copied through a
//! buffer borrowed the same way.
//!
//! The `splice` calls are `nix`'s safe wrappers over owned/borrowed file
//! descriptors, so this crate keeps `unsafe_code = "forbid"`. Weighed
//! against it: `tokio-splice` (0.2, over `libc`) and `tokio-splice2` (0.3,
//! over `rustix`) are safe too, but their `copy_bidirectional` opens a pipe
//! per direction for the life of the call ("reuse pipe" is still on
//! tokio-splice2's to-do list): four descriptors and two pipe buffers held
//! by every idle player, which the pool here exists to avoid, and no say in
//! pipe sizes, stall deadlines or the copy fallback. Readiness
//! comes from tokio (`readable`/`writable` + `try_io`, which clears a stale
//! readiness on `EAGAIN`), so a pump is as cheap to park as a plain read.
//!
//! A pump that cannot hand bytes on (the receiver's TCP window stays shut:
//! a client that stopped reading, a backend that froze) waits at most the
//! stall timeout (`--stall-timeout`) without progress, then the session
//! ends with [`io::ErrorKind::TimedOut`]: otherwise it would keep its
//! slots, its seat and a lent pipe or buffer for as long as the peer keeps
//! the connection open, and the other direction's end would never be seen.
//!
//! Why not `copy_bidirectional_with_sizes`: it allocates both buffers up
//! front and holds them for the life of the connection, so 10,000 idle
//! players would pin 1.3 GB. The byte counters are updated live for
//! `ListConnections` and `/metrics`.
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long a pump waits on a destination that takes no bytes before the
/// session is cut (`--stall-timeout`). A Minecraft server kicks a client that
/// answered no keep-alive for 30 s, so a live session never waits this long.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Read size per pump while data flows (copy path).
pub const BUF_SIZE: usize = 64 * 1024;
/// Pipes kept at most by default (`--splice-pipes`): two per session moving
/// bytes at the same instant, which idle players are not.
pub const DEFAULT_PIPES: usize = 1024;
/// A pipe starts at the kernel's default size (64 KiB). One that carries
/// bulk (a world download, a resource pack: one burst moving more than a
/// pipeful) grows to this, so the rest of the transfer takes a sixteenth of
/// the `splice` calls; chatty sessions keep small pipes (docs/benchmarks.md,
/// edge run 5, has the bulk figures for both sizes).
pub const BULK_PIPE_BYTES: usize = 1024 * 1024;
/// At most this many pipes of an edge are grown to [`BULK_PIPE_BYTES`]: the
/// kernel charges pipe slots to the user whether or not they hold data, and
/// past `fs.pipe-user-pages-soft` (16,384 pages by default) it gives that
/// user's new pipes 8 KiB and refuses to grow any. 32 MiB of slots leaves
/// the rest of the default budget to small pipes.
pub const MAX_BULK_PIPES: usize = 32;

/// Where a pump counts what it moved.
pub struct Tally<'a> {
    pub live: &'a AtomicU64,
    pub metric: Counter,
}

impl Tally<'_> {
    fn add(&self, n: usize) {
        self.live.fetch_add(n as u64, Ordering::Relaxed);
        self.metric.inc_by(n as u64);
    }
}

/// How a pump moves bytes: where it borrows pipes, and how long it waits on
/// a destination that takes none.
#[derive(Clone, Copy)]
pub struct Pumping<'a> {
    pub pipes: &'a PipePool,
    pub stall: Duration,
}

/// Copy both ways until both directions ended, or either failed (a stall
/// is a failure: [`io::ErrorKind::TimedOut`]).
pub async fn splice(
    downstream: TcpStream,
    upstream: TcpStream,
    how: Pumping<'_>,
    up: Tally<'_>,
    down: Tally<'_>,
) -> io::Result<()> {
    let (dr, dw) = downstream.into_split();
    let (ur, uw) = upstream.into_split();
    futures::future::try_join(pump(dr, uw, how, up), pump(ur, dw, how, down)).await?;
    Ok(())
}

/// The error a stalled destination ends a session with.
fn stalled(stall: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer took no bytes for {stall:?}"),
    )
}

/// `write` within `stall`, or the stall error.
async fn within<T>(
    stall: Duration,
    write: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(stall, write)
        .await
        .unwrap_or_else(|_| Err(stalled(stall)))
}

/// How a burst of bytes ended.
enum Burst {
    /// The source has nothing more right now.
    Drained,
    /// The source reached EOF.
    Eof,
}

async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    how: Pumping<'_>,
    tally: Tally<'_>,
) -> io::Result<()> {
    loop {
        // `poll_read_ready` parks on the socket's own reader slot: no
        // waiter node in this future, which is what an idle session holds.
        std::future::poll_fn(|cx| from.as_ref().poll_read_ready(cx)).await?;
        // Boxed: a parked pump holds only its readiness wait, not room for
        // the larger state of a burst (an idle session's size is mostly this).
        let burst = match how.pipes.lend() {
            Some(mut pipe) => Box::pin(pipe.splice_burst(&from, &to, &tally, how.stall)).await?,
            None => Box::pin(copy_burst(&from, &mut to, &tally, how.stall)).await?,
        };
        if let Burst::Eof = burst {
            // The peer may already be gone; nothing more to deliver.
            let _ = to.shutdown().await;
            return Ok(());
        }
    }
}

/// Move what is readable now through a borrowed buffer.
async fn copy_burst(
    from: &OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    tally: &Tally<'_>,
    stall: Duration,
) -> io::Result<Burst> {
    // Uninitialised capacity: `try_read_buf` fills it without zeroing
    // 64 KiB on every wake-up.
    let mut buf: Vec<u8> = Vec::with_capacity(BUF_SIZE);
    loop {
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => {
                // The stall is a wait without progress: each write gets it.
                let mut sent = 0;
                while sent < n {
                    match within(stall, to.write(&buf[sent..n])).await? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        m => {
                            sent += m;
                            tally.add(m);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Pipes for `splice(2)`, lent to a pump only while bytes flow.
#[derive(Debug)]
pub struct PipePool {
    max: usize,
    /// Pipes created and not closed (lent or idle).
    open: AtomicUsize,
    /// Of those, grown to [`BULK_PIPE_BYTES`].
    bulk: AtomicUsize,
    #[cfg(target_os = "linux")]
    idle: Mutex<Vec<linux::Pipe>>,
    #[cfg(not(target_os = "linux"))]
    idle: Mutex<Vec<()>>,
}

impl PipePool {
    /// A pool that opens at most `max` pipes (0: never splice, always copy).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: AtomicUsize::new(0),
            bulk: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Pipes open now (lent or idle).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Pipes grown for bulk transfers, open now.
    pub fn bulk(&self) -> usize {
        self.bulk.load(Ordering::Relaxed)
    }

    /// Pipes idle in the pool now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or_default()
    }
}

#[cfg(not(target_os = "linux"))]
impl PipePool {
    fn lend(&self) -> Option<NoPipe> {
        None
    }
}

/// Where there is no `splice(2)`: never lent.
#[cfg(not(target_os = "linux"))]
enum NoPipe {}

#[cfg(not(target_os = "linux"))]
impl NoPipe {
    async fn splice_burst(
        &mut self,
        _: &OwnedReadHalf,
        _: &OwnedWriteHalf,
        _: &Tally<'_>,
        _: std::time::Duration,
    ) -> io::Result<Burst> {
        match *self {}
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::Ordering;

    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use tokio::io::Interest;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::{within, Burst, PipePool, Tally, BULK_PIPE_BYTES, MAX_BULK_PIPES};

    /// Bytes asked of one `splice` call: the most any pipe of ours holds
    /// (the kernel moves at most what fits).
    const SPLICE_LEN: usize = BULK_PIPE_BYTES;
    /// The smallest pipe worth splicing through: the kernel's default. A
    /// smaller new pipe means the user is past `fs.pipe-user-pages-soft`.
    const MIN_PIPE_BYTES: usize = 64 * 1024;

    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// What the pipe holds at most now.
        pub(super) capacity: usize,
    }

    /// The capacity of a pipe, from its write end.
    fn capacity(write: &OwnedFd) -> Option<usize> {
        fcntl(write, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A pipe on loan; back to the pool on drop when empty, else closed
    /// (bytes stuck in it belong to a connection that failed).
    pub(super) struct Lent<'a> {
        pool: &'a PipePool,
        pub(super) pipe: Option<Pipe>,
        holding: usize,
    }

    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
    }

    impl PipePool {
        pub(super) fn lend(&self) -> Option<Lent<'_>> {
            if self.max == 0 {
                return None;
            }
            let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
            let pipe = match reused {
                Some(p) => p,
                None => {
                    if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
                        self.open.fetch_sub(1, Ordering::AcqRel);
                        return None;
                    }
                    match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
                        Ok((read, write)) => match capacity(&write) {
                            Some(capacity) if capacity >= MIN_PIPE_BYTES => Pipe {
                                read,
                                write,
                                capacity,
                            },
                            got => {
                                // The user's pipe budget is spent: copy.
                                self.open.fetch_sub(1, Ordering::AcqRel);
                                tracing::debug!(
                                    capacity = ?got,
                                    "new pipe too small (fs.pipe-user-pages-soft reached); copying"
                                );
                                return None;
                            }
                        },
                        Err(e) => {
                            // Out of descriptors, say: copy instead.
                            self.open.fetch_sub(1, Ordering::AcqRel);
                            tracing::debug!(error = %e, "no pipe for splice; copying");
                            return None;
                        }
                    }
                }
            };
            Some(Lent {
                pool: self,
                pipe: Some(pipe),
                holding: 0,
            })
        }
    }

    impl Drop for Lent<'_> {
        fn drop(&mut self) {
            let Some(pipe) = self.pipe.take() else {
                return;
            };
            if self.holding == 0 {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(pipe);
                    return;
                }
            }
            self.pool.close(pipe);
        }
    }

    impl PipePool {
        /// Close a pipe of this pool.
        fn close(&self, pipe: Pipe) {
            if pipe.capacity > MIN_PIPE_BYTES {
                self.bulk.fetch_sub(1, Ordering::AcqRel);
            }
            drop(pipe);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }

        /// Grow `pipe` for bulk when the budget allows; a refusal keeps it
        /// as it is.
        pub(super) fn grow(&self, pipe: &mut Pipe) {
            if pipe.capacity >= BULK_PIPE_BYTES {
                return;
            }
            if self.bulk.fetch_add(1, Ordering::AcqRel) >= MAX_BULK_PIPES {
                self.bulk.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let grown = fcntl(&pipe.write, FcntlArg::F_SETPIPE_SZ(BULK_PIPE_BYTES as i32))
                .ok()
                .and_then(|n| usize::try_from(n).ok());
            match grown {
                Some(n) if n > MIN_PIPE_BYTES => pipe.capacity = n,
                _ => {
                    self.bulk.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    impl Lent<'_> {
        /// Splice what is readable now from `from` to `to` through the pipe,
        /// leaving the pipe empty unless an error cut the burst short.
        pub(super) async fn splice_burst(
            &mut self,
            from: &OwnedReadHalf,
            to: &OwnedWriteHalf,
            tally: &Tally<'_>,
            stall: std::time::Duration,
        ) -> io::Result<Burst> {
            let pool = self.pool;
            let Some(pipe) = &mut self.pipe else {
                return Ok(Burst::Drained);
            };
            let src = from.as_ref();
            let dst = to.as_ref();
            let mut moved = 0usize;
            loop {
                let n = match src.try_io(Interest::READABLE, || {
                    splice(src, None, &pipe.write, None, SPLICE_LEN, flags())
                        .map_err(io::Error::from)
                }) {
                    Ok(0) => return Ok(Burst::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.holding = n;
                while self.holding > 0 {
                    within(stall, dst.writable()).await?;
                    match dst.try_io(Interest::WRITABLE, || {
                        splice(&pipe.read, None, dst, None, self.holding, flags())
                            .map_err(io::Error::from)
                    }) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(m) => {
                            self.holding -= m;
                            tally.add(m);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return Err(e),
                    }
                }
                // A burst of more than a pipeful is bulk: grow the pipe
                // (empty now) for the rest of it and for the next borrower.
                moved = moved.saturating_add(n);
                if moved > pipe.capacity {
                    pool.grow(pipe);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Player → edge → backend through `splice`; the player sends `up` and
    /// half-closes, then the backend answers `down` and closes.
    async fn exchange(pipes: &PipePool, up: &[u8], down: &[u8]) {
        let (mut player, edge_down) = pair().await;
        let (edge_up, mut backend) = pair().await;
        let up_n = AtomicU64::new(0);
        let down_n = AtomicU64::new(0);
        let task = async {
            splice(
                edge_down,
                edge_up,
                Pumping {
                    pipes,
                    stall: DEFAULT_STALL_TIMEOUT,
                },
                Tally {
                    live: &up_n,
                    metric: Counter::default(),
                },
                Tally {
                    live: &down_n,
                    metric: Counter::default(),
                },
            )
            .await
        };
        let test = async {
            let (mut pr, mut pw) = player.split();
            let send = async {
                pw.write_all(up).await.unwrap();
                pw.shutdown().await.unwrap();
            };
            let recv_backend = async {
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(send, recv_backend);
            assert!(
                got == up,
                "upstream bytes differ ({} vs {})",
                got.len(),
                up.len()
            );
            // The player's write side is closed; the backend can still answer.
            let (mut br, mut bw) = backend.split();
            let answer = async {
                bw.write_all(down).await.unwrap();
                bw.shutdown().await.unwrap();
            };
            let recv_player = async {
                let mut got = Vec::new();
                pr.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(answer, recv_player);
            assert!(
                got == down,
                "downstream bytes differ ({} vs {})",
                got.len(),
                down.len()
            );
            let mut rest = Vec::new();
            br.read_to_end(&mut rest).await.unwrap();
        };
        let (r, ()) = tokio::join!(task, test);
        r.unwrap();
        assert_eq!(up_n.load(Ordering::Relaxed), up.len() as u64);
        assert_eq!(down_n.load(Ordering::Relaxed), down.len() as u64);
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    #[tokio::test]
    async fn half_close_is_carried_and_the_other_way_keeps_flowing() {
        exchange(&PipePool::new(DEFAULT_PIPES), b"hello", b"world").await;
    }

    #[tokio::test]
    async fn spliced_bytes_arrive_exactly_and_every_pipe_goes_back_to_the_pool_empty() {
        let pipes = PipePool::new(DEFAULT_PIPES);
        exchange(&pipes, &pattern(8 << 20, 1), &pattern(3 << 20, 7)).await;
        if cfg!(target_os = "linux") {
            assert!(pipes.open() >= 1, "the bytes went through a pipe");
        }
        assert_eq!(
            pipes.idle(),
            pipes.open(),
            "no pipe is held after the session"
        );
        // A second session reuses the pool instead of opening more.
        let before = pipes.open();
        exchange(&pipes, &pattern(1 << 20, 3), &pattern(1 << 20, 4)).await;
        assert!(pipes.open() <= before.max(2));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_pipes_grow_within_their_budget_and_carry_bytes_exactly() {
        let pipes = PipePool::new(DEFAULT_PIPES);
        let mut lent: Vec<_> = (0..MAX_BULK_PIPES + 3)
            .map(|_| pipes.lend().expect("a pipe"))
            .collect();
        for l in &mut lent {
            let pipe = l.pipe.as_mut().expect("lent");
            pipes.grow(pipe);
        }
        // The kernel may refuse (a user past its pipe budget); never more
        // than the budget, and every grown pipe is the bulk size.
        assert!(pipes.bulk() <= MAX_BULK_PIPES);
        let grown = lent
            .iter()
            .filter(|l| l.pipe.as_ref().map(|p| p.capacity) == Some(BULK_PIPE_BYTES))
            .count();
        assert_eq!(grown, pipes.bulk());
        // Back last to first: the pool is a stack, so the next borrower
        // gets the first pipe, grown when the kernel allowed any.
        while let Some(l) = lent.pop() {
            drop(l);
        }
        assert_eq!(pipes.idle(), MAX_BULK_PIPES + 3, "all back, empty");
        exchange(&pipes, &pattern(8 << 20, 11), &pattern(5 << 20, 12)).await;
        assert_eq!(pipes.idle(), pipes.open());
        assert!(pipes.bulk() <= MAX_BULK_PIPES);
    }

    /// A backend that never reads: the player's bytes fill every buffer on
    /// the way, then the pump waits on a shut window and the session ends as
    /// a stall, through a pipe and through the copy path alike, leaving no
    /// pipe behind.
    #[tokio::test]
    async fn a_side_that_takes_no_bytes_ends_the_session_after_the_stall_timeout() {
        for pipes in [PipePool::new(DEFAULT_PIPES), PipePool::new(0)] {
            let (mut player, edge_down) = pair().await;
            let (edge_up, backend) = pair().await;
            let flood = tokio::spawn(async move {
                let chunk = pattern(1 << 20, 1);
                // Ends when the edge closes the connection.
                while player.write_all(&chunk).await.is_ok() {}
            });
            let n = AtomicU64::new(0);
            let stall = Duration::from_millis(300);
            let how = Pumping {
                pipes: &pipes,
                stall,
            };
            let tally = || Tally {
                live: &n,
                metric: Counter::default(),
            };
            let ended = tokio::time::timeout(
                Duration::from_secs(60),
                splice(edge_down, edge_up, how, tally(), tally()),
            )
            .await
            .expect("the session ends");
            let err = ended.expect_err("a stall is an error");
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            assert!(
                n.load(Ordering::Relaxed) > 0,
                "bytes moved until the window shut"
            );
            assert_eq!(pipes.idle(), pipes.open(), "no pipe is held");
            flood.await.expect("flood task");
            drop(backend);
        }
    }

    #[tokio::test]
    async fn the_copy_fallback_moves_the_same_bytes_when_no_pipe_is_to_be_had() {
        let none = PipePool::new(0);
        exchange(&none, &pattern(4 << 20, 9), &pattern(2 << 20, 5)).await;
        assert_eq!(none.open(), 0);
        // One pipe for two directions: whichever pump finds it lent copies.
        let one = PipePool::new(1);
        exchange(&one, &pattern(4 << 20, 2), &pattern(4 << 20, 6)).await;
        assert!(one.open() <= 1);
    }
}
