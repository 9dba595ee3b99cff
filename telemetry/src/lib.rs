//! Logging and tracing for both binaries, set up in one place.
//!
//! - Logs go to stderr as text or JSON, filtered by `RUST_LOG` (default
//!   `info`). ANSI colours only when stderr is a terminal, so log files and
//!   journals stay plain.
//! - With an OTLP endpoint (`--otlp-endpoint`), the same spans (one per
//!   connection, wake and sync step) are also exported over OTLP/gRPC with a
//!   batch exporter. Off by default; an unreachable collector costs dropped
//!   spans, never a stalled connection.
#![forbid(unsafe_code)]

pub mod process;
mod throttle;
pub use throttle::LogThrottle;

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Set by [`init`] when spans are exported.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans leave the process (`--otlp-endpoint`). A field only a
/// span's end carries (a connection's outcome and bytes) is worth recording
/// into the span only then: the log layer formats every recorded field at
/// once, whether or not a line is ever written in that span, so for logs
/// the closing line carries such fields itself.
pub fn exporting_spans() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Bound on each OTLP export call.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans (`syncd`, `edge`).
    pub service: &'static str,
    pub log_format: LogFormat,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; `None` = no export.
    pub otlp_endpoint: Option<String>,
    /// Filter used when `RUST_LOG` is unset.
    pub default_filter: &'static str,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid --otlp-endpoint {endpoint:?}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already set: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the exporter alive; dropping it (or [`Telemetry::shutdown`]) flushes
/// the spans still queued.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing spans failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds the OTLP provider for `endpoint` (must run inside a Tokio runtime:
/// the gRPC channel lives on it).
pub fn otlp_provider(
    service: &'static str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(OTLP_EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Installs the global subscriber: logs to stderr, plus OTLP export when
/// configured. Call once, early, inside the Tokio runtime.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.default_filter));
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let logs = match config.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(config.service, endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(config.service))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}
