//! HTTP admin: `/metrics` (Prometheus/OpenMetrics text), `/healthz` (200
//! while the process runs), `/readyz` (200 once the first full read of the
//! routes is done; 503 before that and while shutting down).
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Clone)]
struct Admin {
    metrics: Metrics,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

pub fn router(
    metrics: Metrics,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            metrics,
            ready,
            shutdown,
        })
}

async fn metrics_text(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        a.metrics.render(),
    )
}

async fn readyz(State(a): State<Admin>) -> impl IntoResponse {
    if a.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if *a.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "routes not read yet\n")
    }
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
