//! Whatever a player sends first: modern handshake or legacy ping, then the next packet.
#![no_main]

use mcproto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = parse_first_packet(data);
    if data.len() >= MAX_HANDSHAKE_BYTES {
        assert_ne!(first, Ok(None), "a full buffer must get an answer");
    }
    match first {
        Ok(Some(FirstPacket::Modern { handshake, len })) => {
            assert!(len <= data.len() && len <= MAX_HANDSHAKE_BYTES);
            assert!(handshake.server_address.encode_utf16().count() <= MAX_ADDRESS_CHARS);
            // Canonical input re-encodes byte for byte; over-long VarInts only shrink.
            let again = encode_handshake(&handshake);
            if again.len() == len {
                assert_eq!(&again[..], &data[..len]);
            } else {
                assert!(again.len() < len);
            }
            let rest = &data[len..];
            match handshake.next_state {
                NextState::Status => {
                    if let Ok(Some((_, n))) = parse_status_packet(rest) {
                        assert!(n <= rest.len());
                    }
                }
                NextState::Login | NextState::Transfer => {
                    let version = handshake.protocol_version;
                    if let Ok(Some((login, n))) = parse_login_start(rest, version) {
                        assert!(n <= rest.len() && login.name.encode_utf16().count() <= 16);
                    }
                }
            }
        }
        Ok(Some(FirstPacket::Legacy { ping, len })) => {
            assert!(len <= data.len());
            let info = StatusInfo { motd: "m", version_name: "v", protocol: 1, online: 0, max: 1 };
            let _ = encode_legacy_response(&ping, &info);
        }
        Ok(None) | Err(_) => {}
    }
    let _ = parse_legacy_bare_timeout(data);
});
