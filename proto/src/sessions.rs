//! Session counts of one server, as an edge reports them
//! (`automc.v1.ServerSessions`) and as syncd adds them up across edges: one
//! type on both sides of the report.
use crate::v1::ServerSessions;

/// Live sessions of one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Players spliced to a backend.
    pub players: u32,
    /// Logins held while the server wakes.
    pub holding: u32,
    /// Status pings being answered.
    pub status: u32,
}

impl Counts {
    /// Players or held logins: someone wants to play.
    pub fn active(&self) -> bool {
        self.players > 0 || self.holding > 0
    }

    /// Nothing at all, not even a status ping.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Add `o` in, saturating (a hostile report cannot wrap a total).
    pub fn add(&mut self, o: Counts) {
        self.players = self.players.saturating_add(o.players);
        self.holding = self.holding.saturating_add(o.holding);
        self.status = self.status.saturating_add(o.status);
    }

    /// The report entry of `server` with these counts.
    pub fn to_proto(self, server: &str) -> ServerSessions {
        ServerSessions {
            server: server.to_owned(),
            players: self.players,
            holding: self.holding,
            status: self.status,
        }
    }
}

impl From<&ServerSessions> for Counts {
    fn from(s: &ServerSessions) -> Self {
        Self {
            players: s.players,
            holding: s.holding,
            status: s.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_entry_round_trips_and_totals_saturate() {
        let c = Counts {
            players: 2,
            holding: 1,
            status: 3,
        };
        assert_eq!(Counts::from(&c.to_proto("lobby")), c);
        assert_eq!(c.to_proto("lobby").server, "lobby");
        let mut t = Counts {
            players: u32::MAX,
            ..Counts::default()
        };
        t.add(c);
        assert_eq!(t.players, u32::MAX);
        assert_eq!(t.status, 3);
        assert!(t.active());
        assert!(Counts::default().is_zero());
        assert!(!Counts {
            status: 1,
            ..Counts::default()
        }
        .active());
    }
}
