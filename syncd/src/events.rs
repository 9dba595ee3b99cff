//! Fleet events: players joining and leaving, wakes and sleeps, for
//! `WatchEvents` streams and webhooks.
//!
//! One `tokio::sync::broadcast` channel: publishing never waits (the data
//! path and the sync loop must not slow down for a listener), and each
//! listener has its own bounded queue. A listener that falls behind loses
//! the oldest events; the loss is counted (`automc_syncd_events_dropped`)
//! and reported in the next event it gets.
//!
//! Webhooks (`--webhook-url`, repeatable): one task per URL posts each event
//! as JSON, signed with HMAC-SHA256 over the body when `--webhook-secret` is
//! set (`X-Automc-Signature: sha256=<hex>`), retrying with backoff. No
//! redirects are followed (the signature and the events would go along).
use std::time::Duration;

use automc_proto::v1::{EventKind, FleetEvent};
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::publisher::now_ms;

/// Events queued per listener before it loses the oldest.
pub const QUEUE: usize = 1024;
/// Attempts per webhook delivery, with the pause doubling from this.
const WEBHOOK_ATTEMPTS: u32 = 4;
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(200);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-automc-signature";

/// The event bus of one syncd.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<FleetEvent>,
    metrics: Metrics,
}

impl Events {
    pub fn new(metrics: Metrics) -> Self {
        let (tx, _) = broadcast::channel(QUEUE);
        Self { tx, metrics }
    }

    /// Publish (never waits; nobody listening is fine).
    pub fn emit(&self, mut e: FleetEvent) {
        if e.at_ms == 0 {
            e.at_ms = now_ms();
        }
        let _ = self.tx.send(e);
    }

    pub fn player(&self, kind: EventKind, server: &str, edge: &str, name: &str, uuid: &str) {
        self.emit(FleetEvent {
            kind: kind as i32,
            server: server.to_owned(),
            edge_id: edge.to_owned(),
            player: name.to_owned(),
            uuid: uuid.to_owned(),
            ..FleetEvent::default()
        });
    }

    pub fn server(&self, kind: EventKind, server: &str, address: &str, reason: &str) {
        self.emit(FleetEvent {
            kind: kind as i32,
            server: server.to_owned(),
            address: address.to_owned(),
            reason: reason.to_owned(),
            ..FleetEvent::default()
        });
    }

    /// Every event from now on, for one `WatchEvents` stream.
    pub fn stream(&self) -> impl Stream<Item = FleetEvent> + Send + 'static {
        let rx = self.tx.subscribe();
        let metrics = self.metrics.clone();
        futures::stream::unfold((rx, 0u64), move |(mut rx, mut lost)| {
            let metrics = metrics.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(mut e) => {
                            e.dropped = std::mem::take(&mut lost);
                            return Some((e, (rx, lost)));
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics.events_dropped.inc_by(n);
                            lost += n;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }
}

/// `EVENT_KIND_PLAYER_JOINED` → `"player_joined"`.
pub fn kind_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Unspecified => "unspecified",
        EventKind::PlayerJoined => "player_joined",
        EventKind::PlayerLeft => "player_left",
        EventKind::WakeStarted => "wake_started",
        EventKind::WakeFinished => "wake_finished",
        EventKind::WakeFailed => "wake_failed",
        EventKind::SleepRequested => "sleep_requested",
        EventKind::SleepDone => "sleep_done",
        EventKind::SleepFailed => "sleep_failed",
    }
}

/// The JSON body a webhook receives.
pub fn webhook_body(e: &FleetEvent) -> Vec<u8> {
    serde_json::json!({
        "kind": kind_word(e.kind()),
        "at_ms": e.at_ms,
        "server": e.server,
        "edge_id": e.edge_id,
        "player": e.player,
        "uuid": e.uuid,
        "address": e.address,
        "reason": e.reason,
        "dropped": e.dropped,
    })
    .to_string()
    .into_bytes()
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Post every event to `url` until `shutdown`.
pub async fn webhook(
    events: Events,
    url: String,
    secret: Option<String>,
    shutdown: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WEBHOOK_TIMEOUT)
        .connect_timeout(WEBHOOK_TIMEOUT)
        .user_agent(concat!("automc-syncd/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client could not be built; webhooks are off");
            return;
        }
    };
    let stream = events.stream();
    tokio::pin!(stream);
    loop {
        let e = tokio::select! {
            () = shutdown.cancelled() => return,
            e = futures::StreamExt::next(&mut stream) => match e { Some(e) => e, None => return },
        };
        let body = webhook_body(&e);
        let mut pause = WEBHOOK_BACKOFF;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let mut req = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(s) = &secret {
                req = req.header(SIGNATURE_HEADER, signature(s.as_bytes(), &body));
            }
            let r = tokio::select! {
                () = shutdown.cancelled() => return,
                r = req.send() => r,
            };
            match r {
                Ok(resp) if resp.status().is_success() => {
                    events.metrics.webhook_outcome("delivered");
                    break;
                }
                Ok(resp) => {
                    tracing::debug!(
                        status = resp.status().as_u16(),
                        attempt,
                        "webhook refused an event"
                    )
                }
                Err(e) => tracing::debug!(error = %e, attempt, "webhook unreachable"),
            }
            if attempt == WEBHOOK_ATTEMPTS {
                events.metrics.webhook_outcome("failed");
                tracing::warn!(kind = kind_word(e.kind()), server = %e.server, "webhook delivery failed; event dropped");
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn signatures_match_rfc_4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_slow_listener_loses_the_oldest_events_and_is_told_how_many() {
        let events = Events::new(Metrics::new());
        let stream = events.stream();
        tokio::pin!(stream);
        for i in 0..(QUEUE + 10) {
            events.server(EventKind::WakeStarted, &format!("s{i}"), "", "");
        }
        let first = stream.next().await.expect("an event");
        assert_eq!(first.dropped, 10);
        assert_eq!(first.server, "s10");
        let second = stream.next().await.expect("an event");
        assert_eq!(second.dropped, 0);
    }
}
