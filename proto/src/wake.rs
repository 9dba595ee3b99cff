//! A failed `Wake` as both sides see it: syncd attaches a [`WakeFailure`] to
//! the status as a `google.rpc.ErrorInfo` detail (reason = the enum's proto
//! name, domain [`ERROR_DOMAIN`]); the edge reads it back and `match`es. The
//! status message stays for people (logs, grpcurl) and is never parsed.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::v1::WakeFailure;

/// `ErrorInfo.domain` of every automc error detail.
pub const ERROR_DOMAIN: &str = "automc.v1";

impl WakeFailure {
    /// The gRPC code a failed `Wake` carries for this reason (also what
    /// clients that do not read details go by).
    pub fn code(self) -> Code {
        match self {
            Self::NotConfigured => Code::FailedPrecondition,
            Self::Standby => Code::Aborted,
            Self::Timeout => Code::DeadlineExceeded,
            Self::UnknownServer => Code::NotFound,
            Self::WakerRefused
            | Self::WakerUnreachable
            | Self::WakerBadResponse
            | Self::NotReady
            | Self::ShuttingDown => Code::Unavailable,
            Self::Unspecified => Code::Unknown,
        }
    }

    /// The status syncd answers a failed `Wake` with.
    pub fn to_status(self, message: impl Into<String>) -> Status {
        Status::with_error_details(
            self.code(),
            message,
            ErrorDetails::with_error_info(self.as_str_name(), ERROR_DOMAIN, HashMap::new()),
        )
    }

    /// The failure syncd attached to `status`; `None` when the status was
    /// made elsewhere (this side's transport, a proxy, the auth check).
    pub fn from_status(status: &Status) -> Option<Self> {
        let info = status.get_details_error_info()?;
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        Self::from_str_name(&info.reason)
    }

    /// Metric label and `ListWakes`-friendly short name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::NotConfigured => "not_configured",
            Self::Standby => "standby",
            Self::WakerRefused => "waker_refused",
            Self::WakerUnreachable => "waker_unreachable",
            Self::WakerBadResponse => "waker_bad_response",
            Self::Timeout => "timeout",
            Self::NotReady => "not_ready",
            Self::ShuttingDown => "shutting_down",
            Self::UnknownServer => "unknown_server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [WakeFailure; 10] = [
        WakeFailure::Unspecified,
        WakeFailure::NotConfigured,
        WakeFailure::Standby,
        WakeFailure::WakerRefused,
        WakeFailure::WakerUnreachable,
        WakeFailure::WakerBadResponse,
        WakeFailure::Timeout,
        WakeFailure::NotReady,
        WakeFailure::ShuttingDown,
        WakeFailure::UnknownServer,
    ];

    #[test]
    fn every_failure_survives_the_trip_through_a_status() {
        for f in ALL {
            let s = f.to_status("words for people");
            // Through the wire encoding, as a client receives it.
            let mut headers = tonic::metadata::MetadataMap::new().into_headers();
            s.add_header(&mut headers).expect("headers");
            let back = Status::from_header_map(&headers).expect("a status");
            assert_eq!(back.code(), f.code(), "{f:?}");
            assert_eq!(WakeFailure::from_status(&back), Some(f), "{f:?}");
        }
    }

    #[test]
    fn a_status_without_the_detail_has_no_failure() {
        assert_eq!(
            WakeFailure::from_status(&Status::unavailable("waker not configured")),
            None
        );
        let other_domain = Status::with_error_details(
            Code::Unavailable,
            "x",
            ErrorDetails::with_error_info("WAKE_FAILURE_TIMEOUT", "example.com", HashMap::new()),
        );
        assert_eq!(WakeFailure::from_status(&other_domain), None);
    }
}
