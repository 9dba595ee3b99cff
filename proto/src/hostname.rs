//! Hostname normalisation, for matching only: the bytes a player sent are
//! forwarded to the backend untouched.
//!
//! Two inputs are normalised differently:
//! - what a player typed, as it arrives in the handshake's server address,
//!   which may carry Forge markers (`\0FML2\0`) or a TCPShield-style
//!   `///ip:port///...` suffix ([`normalize_player_hostname`]);
//! - what an operator stored in `servers.domain` or the alias table
//!   ([`normalize_domain`]).

/// Normalise the server address from a handshake for lookup: cut at the first
/// NUL (Forge markers), strip a TCPShield-style `///...` suffix, trim
/// whitespace, lowercase, drop one trailing dot.
pub fn normalize_player_hostname(raw: &str) -> String {
    let cut = raw.split('\0').next().unwrap_or_default();
    let cut = cut.split("///").next().unwrap_or_default();
    finish(cut)
}

/// Normalise a stored domain (`servers.domain`, alias rows): trim, lowercase,
/// drop one trailing dot. Returns `None` for an empty domain, which is not a
/// route.
pub fn normalize_domain(raw: &str) -> Option<String> {
    let d = finish(raw);
    (!d.is_empty()).then_some(d)
}

fn finish(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    s.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_hostnames_are_normalised_for_matching() {
        let cases = [
            ("Play.Example.COM", "play.example.com"),
            ("play.example.com.", "play.example.com"),
            ("play.example.com..", "play.example.com."),
            ("play.example.com\0FML\0", "play.example.com"),
            ("play.example.com\0FML2\0", "play.example.com"),
            ("play.example.com\0FML3\0", "play.example.com"),
            ("play.example.com\0FORGE", "play.example.com"),
            ("play.example.com.\0FML2\0", "play.example.com"),
            (
                "play.example.com///1.2.3.4:5555///1700000000///sig",
                "play.example.com",
            ),
            ("PLAY.example.com.///1.2.3.4:5555", "play.example.com"),
            ("", ""),
            ("\0FML\0", ""),
            (" spaced.example.com ", "spaced.example.com"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_player_hostname(raw), want, "input {raw:?}");
        }
    }

    #[test]
    fn stored_domains_are_normalised_and_empty_is_none() {
        assert_eq!(
            normalize_domain(" A.Example.com. ").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            normalize_domain("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(normalize_domain("*").as_deref(), Some("*"));
        assert_eq!(normalize_domain(""), None);
        assert_eq!(normalize_domain("   "), None);
        assert_eq!(normalize_domain("."), None);
    }
}
