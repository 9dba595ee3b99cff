//! Status/login-phase packets from players and backends, and the stale-status rewriter.
#![no_main]

use mcproto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((packet, n))) = parse_status_packet(data) {
        assert!(n <= data.len());
        let again = match packet {
            StatusPacket::Request => encode_status_request(),
            StatusPacket::Ping(v) => encode_ping(v),
        };
        assert!(again.len() <= n);
    }
    if let Ok(Some((_, n))) = parse_login_start(data, 760) {
        assert!(n <= data.len());
    }
    if let Ok(Some((json, n))) = parse_status_response(data, 1 << 16) {
        assert!(n <= data.len() && n <= (1 << 16) + 3);
        let _ = mark_status_stale(&json, "(cached)");
    }
    let _ = parse_pong(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(marked) = mark_status_stale(text, "(cached)") {
            assert!(serde_json::from_str::<serde_json::Value>(&marked).is_ok());
        }
        let d = encode_login_disconnect(text);
        let (json, _) = parse_status_response(&d, usize::MAX).expect("own packet").expect("complete");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["text"].as_str(), Some(text));
    }
});
