//! The bearer token on gRPC calls (`authorization: Bearer <token>`), both
//! ends: [`BearerAuth`] checks it on a server (syncd's `RouteSync`, the
//! edge's `EdgeAdmin`), [`BearerToken`] adds it on a client (edges, the
//! `syncd routes` CLI), and [`read_token_file`] reads one from a file
//! (`--grpc-token-file` and friends). One spelling of the header for every
//! process. A server wraps only the services the token guards: health and
//! reflection stay open so probes and grpcurl work without the secret.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// Server interceptor checking `authorization: Bearer <token>`.
#[derive(Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// `None` (or an empty token) lets every call through.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.as_bytes())),
        }
    }

    /// Whether an `authorization` header value carries the token.
    pub fn accepts(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(header) = header else {
            return Err(Status::unauthenticated("missing bearer token"));
        };
        let presented = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| header.get(7..))
            .unwrap_or_default();
        if constant_time_eq(presented, expected) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        self.accepts(header)?;
        Ok(req)
    }
}

/// Compare without an early exit, so response time does not reveal how many
/// leading bytes of a guess were right. The length is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token that cannot travel in a gRPC header.
#[derive(Debug, thiserror::Error)]
#[error("the token is not a valid header value (visible ASCII only)")]
pub struct InvalidToken;

/// Client interceptor adding `authorization: Bearer <token>` to every call
/// (nothing when no token is configured).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        token
            .filter(|t| !t.is_empty())
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| InvalidToken)
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An empty file must not silently turn authentication off.
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// Read a secret from a file (a Kubernetes Secret volume, a systemd
/// credential); surrounding whitespace, such as the final newline, is not
/// part of it.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty(path.to_owned()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn token_checks() {
        let auth = BearerAuth::new(Some("s3cret"));
        let cases: [(Option<&[u8]>, bool); 7] = [
            (Some(b"Bearer s3cret"), true),
            (Some(b"bearer s3cret"), true),
            (Some(b"Bearer s3cre"), false),
            (Some(b"Bearer s3cret2"), false),
            (Some(b"Basic s3cret"), false),
            (Some(b"s3cret"), false),
            (None, false),
        ];
        for (header, ok) in cases {
            assert_eq!(auth.accepts(header).is_ok(), ok, "{header:?}");
        }
        let open = BearerAuth::new(None);
        assert!(open.accepts(None).is_ok());
        assert!(BearerAuth::new(Some("")).accepts(None).is_ok());
    }

    #[test]
    fn the_client_header_is_what_the_server_accepts() {
        let mut client = BearerToken::new(Some("s3cret")).expect("ascii token");
        let req = client.call(Request::new(())).expect("adds a header");
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        assert!(BearerAuth::new(Some("s3cret")).accepts(header).is_ok());
        assert!(BearerToken::new(Some("line\nbreak")).is_err());
        let mut none = BearerToken::new(None).expect("no token");
        let req = none.call(Request::new(())).expect("passes");
        assert!(req.metadata().get("authorization").is_none());
    }

    #[test]
    fn a_token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("automc-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret\n").expect("write");
        assert_eq!(read_token_file(&file).expect("reads"), "s3cret");
        std::fs::write(&file, "\n").expect("write");
        assert!(matches!(
            read_token_file(&file),
            Err(TokenFileError::Empty(_))
        ));
        assert!(matches!(
            read_token_file(&dir.join("missing")),
            Err(TokenFileError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
