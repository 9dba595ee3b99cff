//! Optional bearer token on RPCs (`--grpc-token`). Health stays open so load
//! balancers and orchestrators can probe without the secret.
use std::sync::Arc;

use tonic::{Request, Status};

/// Tonic interceptor checking `authorization: Bearer <token>`.
#[derive(Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
