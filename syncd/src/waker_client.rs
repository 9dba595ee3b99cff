//! HTTP client of the waker (SPEC §4): `POST {waker}/servers/{name}/start`
//! with `X-API-Key`, then `GET {waker}/servers/{name}` for the state and
//! address. One pooled client, a timeout on every request, and a distinct
//! error per way the waker can fail. The token is never logged or put in an
//! error.
//!
//! Redirects are not followed: reqwest drops only `Authorization` and
//! `Cookie` on a cross-host hop, so following one would hand `X-API-Key` to
//! whatever host the redirect names. A redirect is a failed wake that says
//! so. Response bodies are read up to [`MAX_BODY_BYTES`] and no further.
use std::time::Duration;

use automc_proto::WakeFailure;
use reqwest::{StatusCode, Url};

use crate::metrics::Metrics;

/// The most a waker response body may hold (a status answer is a few bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WakerError {
    #[error("invalid waker URL: {0}")]
    BadUrl(String),
    #[error("waker answered HTTP {0} to the start request")]
    StartRejected(u16),
    #[error("waker answered HTTP {0} to the status request")]
    StatusRejected(u16),
    #[error("waker answered HTTP {0} to the stop request")]
    StopRejected(u16),
    #[error("waker cannot stop servers: it answered HTTP {0} to POST /servers/{{name}}/stop")]
    StopUnsupported(u16),
    #[error("waker unreachable: {0}")]
    Unreachable(String),
    #[error("waker did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("waker sent a status body that is not the expected JSON ({0})")]
    BadBody(String),
    #[error("waker sent a response body over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error(
        "waker answered HTTP {status} redirecting to {location}; redirects are not followed \
         (the token would go along): set --waker-url to the final address"
    )]
    Redirected { status: u16, location: String },
}

impl WakerError {
    /// The typed reason a failed wake carries across the wire.
    pub fn kind(&self) -> WakeFailure {
        match self {
            Self::BadUrl(_) => WakeFailure::NotConfigured,
            Self::StartRejected(_)
            | Self::StatusRejected(_)
            | Self::StopRejected(_)
            | Self::StopUnsupported(_)
            | Self::Redirected { .. } => WakeFailure::WakerRefused,
            Self::Unreachable(_) | Self::NoAnswer(_) => WakeFailure::WakerUnreachable,
            Self::BadBody(_) | Self::BodyTooLarge => WakeFailure::WakerBadResponse,
        }
    }
}

/// Where a redirect points, without any user info or query (for the log).
fn redirect_target(resp: &reqwest::Response) -> String {
    let Some(loc) = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "(no Location)".into();
    };
    match resp.url().join(loc) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(an unparsable Location)".into(),
    }
}

/// What `GET /servers/{name}` says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ServerStatus {
    pub state: String,
    #[serde(default)]
    pub address: Option<String>,
}

pub struct WakerClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    request_timeout: Duration,
    metrics: Metrics,
}

impl WakerClient {
    pub fn new(
        base: &str,
        token: Option<String>,
        request_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, WakerError> {
        let mut base = Url::parse(base).map_err(|e| WakerError::BadUrl(format!("{base}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(WakerError::BadUrl(format!(
                "{base}: must be http(s)://host[:port][/path]"
            )));
        }
        // Make `join`-free path pushing predictable: no trailing empty segment.
        if let Ok(mut segs) = base.path_segments_mut() {
            segs.pop_if_empty();
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("automc-syncd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WakerError::BadUrl(format!("http client: {e}")))?;
        Ok(Self {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
            request_timeout,
            metrics,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `{base}/servers/{server}` and, with an action, `/{action}`.
    fn url(&self, server: &str, action: Option<&str>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.push("servers").push(server);
            if let Some(a) = action {
                segs.push(a);
            }
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url).timeout(self.request_timeout);
        match &self.token {
            Some(t) => req.header("X-API-Key", t),
            None => req,
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> WakerError {
        self.metrics.waker_response("error");
        if e.is_timeout() {
            WakerError::NoAnswer(self.request_timeout)
        } else {
            WakerError::Unreachable(root_cause(e))
        }
    }

    /// `POST {base}/servers/{server}/{action}`: the answer's status.
    async fn post(&self, server: &str, action: &str) -> Result<StatusCode, WakerError> {
        let resp = self
            .send(reqwest::Method::POST, self.url(server, Some(action)))
            .await?;
        Ok(resp.status())
    }

    /// One request, its answer counted; a redirect is an error (never
    /// followed).
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
    ) -> Result<reqwest::Response, WakerError> {
        let resp = self
            .request(method, url)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        self.metrics.waker_response(status.as_str());
        if status.is_redirection() {
            return Err(self.redirected(&resp));
        }
        Ok(resp)
    }

    /// Ask the waker to start `server`; 2xx and 409 (already starting) are
    /// success.
    pub async fn start(&self, server: &str) -> Result<(), WakerError> {
        let status = self.post(server, "start").await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(WakerError::StartRejected(status.as_u16()))
        }
    }

    /// Ask the waker to stop `server`; 2xx and 409 (already stopping or
    /// stopped) are success. 404, 405 and 501 mean this waker has no stop
    /// endpoint ([`WakerError::StopUnsupported`]).
    pub async fn stop(&self, server: &str) -> Result<(), WakerError> {
        let status = self.post(server, "stop").await?;
        match status.as_u16() {
            _ if status.is_success() || status == StatusCode::CONFLICT => Ok(()),
            code @ (404 | 405 | 501) => Err(WakerError::StopUnsupported(code)),
            code => Err(WakerError::StopRejected(code)),
        }
    }

    /// The waker's view of `server`.
    pub async fn status(&self, server: &str) -> Result<ServerStatus, WakerError> {
        let resp = self
            .send(reqwest::Method::GET, self.url(server, None))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(WakerError::StatusRejected(status.as_u16()));
        }
        let body = self.capped_body(resp).await?;
        serde_json::from_slice::<ServerStatus>(&body)
            .map_err(|e| WakerError::BadBody(e.to_string()))
    }

    fn redirected(&self, resp: &reqwest::Response) -> WakerError {
        self.metrics.waker_response("redirect");
        WakerError::Redirected {
            status: resp.status().as_u16(),
            location: redirect_target(resp),
        }
    }

    /// The body, refused past [`MAX_BODY_BYTES`] (also when a
    /// `Content-Length` announces more, before reading any of it).
    async fn capped_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, WakerError> {
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            self.metrics.waker_response("body_too_large");
            return Err(WakerError::BodyTooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                self.metrics.waker_response("body_too_large");
                return Err(WakerError::BodyTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl ServerStatus {
    /// The waker says the server runs.
    pub fn is_running(&self) -> bool {
        automc_proto::RouteState::parse(&self.state) == automc_proto::RouteState::Running
    }
}

/// The innermost error message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_contract_and_escape_names() {
        let c = WakerClient::new(
            "http://w:8080/api/",
            None,
            Duration::from_secs(1),
            Metrics::new(),
        )
        .expect("client");
        assert_eq!(
            c.url("lobby", Some("start")).as_str(),
            "http://w:8080/api/servers/lobby/start"
        );
        assert_eq!(
            c.url("lobby", Some("stop")).as_str(),
            "http://w:8080/api/servers/lobby/stop"
        );
        assert_eq!(
            c.url("lobby", None).as_str(),
            "http://w:8080/api/servers/lobby"
        );
        assert_eq!(
            c.url("a/b c", None).as_str(),
            "http://w:8080/api/servers/a%2Fb%20c"
        );
        assert!(
            WakerClient::new("not a url", None, Duration::from_secs(1), Metrics::new()).is_err()
        );
    }
}
