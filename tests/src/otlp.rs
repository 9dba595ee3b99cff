//! A fake OpenTelemetry collector: a real tonic server on 127.0.0.1:0
//! speaking OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService`),
//! recording every span it receives as (service.name, span name, attribute
//! keys).
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_util::sync::CancellationToken;

/// One received span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanSeen {
    pub service: String,
    pub name: String,
    /// The span's attribute keys (its recorded fields).
    pub keys: Vec<String>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<SpanSeen>>>);

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    seen.push(SpanSeen {
                        service: service.clone(),
                        name: span.name,
                        keys: span.attributes.into_iter().map(|kv| kv.key).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running collector; stops when dropped.
pub struct FakeCollector {
    addr: SocketAddr,
    spans: Recorder,
    shutdown: CancellationToken,
}

impl FakeCollector {
    pub async fn start() -> FakeCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("collector addr");
        let spans = Recorder::default();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let service = TraceServiceServer::new(spans.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
        });
        FakeCollector {
            addr,
            spans,
            shutdown,
        }
    }

    /// What to pass as `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<SpanSeen> {
        self.spans
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Spans named `name` from `service`.
    pub fn count(&self, service: &str, name: &str) -> usize {
        self.spans()
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .count()
    }

    /// Whether a span named `name` from `service` carries every one of `keys`.
    pub fn has_span_with(&self, service: &str, name: &str, keys: &[&str]) -> bool {
        self.spans().iter().any(|s| {
            s.service == service
                && s.name == name
                && keys.iter().all(|k| s.keys.iter().any(|have| have == k))
        })
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
