//! The player listener: the accept loop, backing off on accept errors such
//! as running out of file descriptors. Admission runs here, before a task or
//! a byte is spent on a connection; the live connections are in
//! [`crate::registry`].
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::Shared;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept players until `stop`; each connection runs on `tracker` and ends
/// early when `cut` fires.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // Refused before a task or a byte is spent on it.
                let admitted = match crate::conn::admit(&shared, peer) {
                    Ok(a) => a,
                    Err(r) => {
                        crate::conn::refused(&shared, peer, r.reason());
                        drop(stream);
                        continue;
                    }
                };
                let shared = shared.clone();
                let cut = cut.clone();
                let conn =
                    crate::conn::handle(stream, peer, admitted, shared, cut, tracker.clone());
                tracker.spawn(conn);
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: the listener is fine, the process
                // is out of something; wait instead of spinning.
                warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}
