//! What a route's `state` column means, in one place. The column is free
//! text written by operators and wakers; these are the values the product
//! acts on, so no caller compares strings.
use crate::v1::Route;

/// The states the router distinguishes; anything else is [`RouteState::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    /// `running`: dial the backend.
    Running,
    /// `stopped`: wake before dialling.
    Stopped,
    /// `starting` or `waking`: a start is under way.
    Starting,
    /// Any other value (empty, `crashed`, a waker's own words).
    Other,
}

impl RouteState {
    /// Read a state as written in `servers.state` or a waker's JSON.
    pub fn parse(state: &str) -> Self {
        match state {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "starting" | "waking" => Self::Starting,
            _ => Self::Other,
        }
    }
}

impl Route {
    /// The route's state, classified.
    pub fn run_state(&self) -> RouteState {
        RouteState::parse(&self.state)
    }

    /// `state = running`.
    pub fn is_running(&self) -> bool {
        self.run_state() == RouteState::Running
    }

    /// `state = stopped`.
    pub fn is_stopped(&self) -> bool {
        self.run_state() == RouteState::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_classified_exactly_as_written() {
        let cases = [
            ("running", RouteState::Running),
            ("stopped", RouteState::Stopped),
            ("starting", RouteState::Starting),
            ("waking", RouteState::Starting),
            ("", RouteState::Other),
            ("crashed", RouteState::Other),
            ("Running ", RouteState::Other),
        ];
        for (text, want) in cases {
            assert_eq!(RouteState::parse(text), want, "{text:?}");
        }
        let route = Route {
            state: "stopped".into(),
            ..Route::default()
        };
        assert!(route.is_stopped() && !route.is_running());
    }
}
