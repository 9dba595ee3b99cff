//! A fake waker: a real HTTP server (axum on 127.0.0.1:0) speaking the
//! waker contract (`POST /servers/{name}/start`, `GET /servers/{name}`,
//! `POST /servers/{name}/stop`),
//! with a behaviour per server that models what real wakers do: start after
//! a delay, answer 409, fail with 5xx, send garbage JSON, hang, never finish,
//! redirect elsewhere, send a body too large to be a status answer.
//! It counts requests and records every `X-API-Key` it was sent.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

/// How the fake waker treats one server.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// `POST` answers 202 (409 when `conflict`); `GET` says "starting" until
    /// `delay` after the first `POST`, then "running" with `address` (no
    /// address field when `None`).
    Starts {
        delay: Duration,
        address: Option<String>,
        conflict: bool,
    },
    /// `POST` answers this status (e.g. 503).
    StartFails(u16),
    /// `POST` answers 202, `GET` answers 200 with a body that is not JSON.
    GarbageStatus,
    /// `POST` never answers.
    Hangs,
    /// `POST` answers 202, `GET` says "starting" forever.
    NeverRuns,
    /// Every request answers `307 Temporary Redirect` to the same path under
    /// `to` (another waker's base URL).
    Redirects { to: String },
    /// `POST` answers 202, `GET` streams valid "running" JSON padded to
    /// `bytes` (chunked: no `Content-Length` announces it).
    HugeStatus { bytes: usize },
}

impl Behaviour {
    /// Starts after `delay`, no address in the answer.
    pub fn starts_after(delay: Duration) -> Self {
        Self::Starts {
            delay,
            address: None,
            conflict: false,
        }
    }

    /// Starts after `delay` and reports `address`.
    pub fn starts_at(delay: Duration, address: &str) -> Self {
        Self::Starts {
            delay,
            address: Some(address.to_owned()),
            conflict: false,
        }
    }
}

/// How the fake waker answers `POST /servers/{name}/stop`.
#[derive(Debug, Clone)]
pub enum StopBehaviour {
    /// 202 after `delay`; the next start begins from "starting" again.
    Stops { delay: Duration },
    /// Answers this status (404/405/501: "cannot stop"; 500: a failure).
    Answers(u16),
    /// Holds the request until the test cancels the token, then stops like
    /// `Stops` (202): the test drives "a stop is in flight" directly.
    UntilReleased(CancellationToken),
}

#[derive(Default)]
struct Inner {
    behaviours: HashMap<String, Behaviour>,
    stop_behaviours: HashMap<String, StopBehaviour>,
    stops: HashMap<String, u64>,
    first_post: HashMap<String, Instant>,
    posts: HashMap<String, u64>,
    gets: HashMap<String, u64>,
    api_keys: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running fake waker; stops when dropped.
pub struct FakeWaker {
    addr: SocketAddr,
    inner: Shared,
    shutdown: CancellationToken,
}

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeWaker {
    /// Start on 127.0.0.1:0. Servers without a behaviour start after 100 ms.
    pub async fn start() -> FakeWaker {
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route("/servers/{name}/start", post(start_server))
            .route("/servers/{name}/stop", post(stop_server))
            .route("/servers/{name}", get(server_status))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake waker cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake waker local_addr: {e}"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        FakeWaker {
            addr,
            inner,
            shutdown,
        }
    }

    /// Base URL to configure as `--waker-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, server: &str, behaviour: Behaviour) {
        lock(&self.inner)
            .behaviours
            .insert(server.to_owned(), behaviour);
    }

    /// How `POST /servers/{server}/stop` answers (default: 202 at once).
    pub fn set_stop(&self, server: &str, behaviour: StopBehaviour) {
        lock(&self.inner)
            .stop_behaviours
            .insert(server.to_owned(), behaviour);
    }

    /// `POST /servers/{server}/stop` requests received.
    pub fn stops(&self, server: &str) -> u64 {
        lock(&self.inner).stops.get(server).copied().unwrap_or(0)
    }

    /// `POST /servers/{server}/start` requests received.
    pub fn posts(&self, server: &str) -> u64 {
        lock(&self.inner).posts.get(server).copied().unwrap_or(0)
    }

    /// `GET /servers/{server}` requests received.
    pub fn gets(&self, server: &str) -> u64 {
        lock(&self.inner).gets.get(server).copied().unwrap_or(0)
    }

    /// The `X-API-Key` of every request, in arrival order.
    pub fn api_keys(&self) -> Vec<Option<String>> {
        lock(&self.inner).api_keys.clone()
    }
}

impl Drop for FakeWaker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn behaviour(inner: &Inner, server: &str) -> Behaviour {
    inner
        .behaviours
        .get(server)
        .cloned()
        .unwrap_or_else(|| Behaviour::starts_after(Duration::from_millis(100)))
}

fn record(inner: &mut Inner, headers: &HeaderMap) {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    inner.api_keys.push(key);
}

async fn start_server(
    State(inner): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let b = {
        let mut i = lock(&inner);
        record(&mut i, &headers);
        *i.posts.entry(name.clone()).or_default() += 1;
        i.first_post
            .entry(name.clone())
            .or_insert_with(Instant::now);
        behaviour(&i, &name)
    };
    match b {
        Behaviour::Redirects { to } => redirect(&to, &format!("/servers/{name}/start")),
        Behaviour::Starts { conflict: true, .. } => {
            (StatusCode::CONFLICT, "already starting").into_response()
        }
        Behaviour::StartFails(code) => answer(code, "boom"),
        Behaviour::Hangs => std::future::pending::<Response>().await,
        _ => accepted(),
    }
}

async fn stop_server(
    State(inner): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let b = {
        let mut i = lock(&inner);
        record(&mut i, &headers);
        *i.stops.entry(name.clone()).or_default() += 1;
        i.stop_behaviours
            .get(&name)
            .cloned()
            .unwrap_or(StopBehaviour::Stops {
                delay: Duration::ZERO,
            })
    };
    match b {
        StopBehaviour::Stops { delay } => {
            tokio::time::sleep(delay).await;
            stopped(&inner, &name)
        }
        StopBehaviour::UntilReleased(release) => {
            release.cancelled().await;
            stopped(&inner, &name)
        }
        StopBehaviour::Answers(code) => answer(code, "no"),
    }
}

/// A stop accepted: a later start goes through "starting" again.
fn stopped(inner: &Shared, name: &str) -> Response {
    lock(inner).first_post.remove(name);
    accepted()
}

/// What a waker says when it takes a start or a stop.
fn accepted() -> Response {
    (StatusCode::ACCEPTED, r#"{"ok":true}"#).into_response()
}

/// A refusal with status `code` (500 when `code` is not a status).
fn answer(code: u16, body: &'static str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response()
}

fn redirect(base: &str, path: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [("location", format!("{base}{path}"))],
    )
        .into_response()
}

async fn server_status(
    State(inner): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (b, since) = {
        let mut i = lock(&inner);
        record(&mut i, &headers);
        *i.gets.entry(name.clone()).or_default() += 1;
        (behaviour(&i, &name), i.first_post.get(&name).copied())
    };
    let json = |v: serde_json::Value| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    match b {
        Behaviour::Starts { delay, address, .. } => {
            let running = since.is_some_and(|t| t.elapsed() >= delay);
            match (running, address) {
                (false, _) => json(serde_json::json!({"state": "starting"})),
                (true, Some(a)) => json(serde_json::json!({"state": "running", "address": a})),
                (true, None) => json(serde_json::json!({"state": "running"})),
            }
        }
        Behaviour::GarbageStatus => (StatusCode::OK, "<html>not json</html>").into_response(),
        Behaviour::Redirects { to } => redirect(&to, &format!("/servers/{name}")),
        Behaviour::HugeStatus { bytes } => {
            let head = r#"{"state":"running","pad":""#;
            let pad = bytes.saturating_sub(head.len() + 2);
            let chunks = std::iter::once(head.to_owned())
                .chain((0..pad.div_ceil(4096)).map(move |i| "x".repeat(4096.min(pad - i * 4096))))
                .chain(std::iter::once("\"}".to_owned()))
                .map(Ok::<_, std::convert::Infallible>);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                axum::body::Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response()
        }
        Behaviour::NeverRuns | Behaviour::StartFails(_) | Behaviour::Hangs => {
            json(serde_json::json!({"state": "starting"}))
        }
    }
}
