//! Legacy pings: the fuzzer's bytes follow a 1.6 `FE 01 FA` header so it spends its time in
//! the MC|PingHost parser, and parsed pings are answered with a fuzzed MOTD.
#![no_main]

use mcproto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the prefix, the rest is the tail / MOTD.
    let Some((&pick, tail)) = data.split_first() else { return };
    let prefix: &[u8] = match pick % 3 {
        0 => &[0xfe, 0x01, 0xfa],
        1 => &[0xfe, 0x01, 0xfa, 0x00, 0x0b, 0x00, b'M', 0x00, b'C', 0x00, b'|', 0x00, b'P', 0x00,
               b'i', 0x00, b'n', 0x00, b'g', 0x00, b'H', 0x00, b'o', 0x00, b's', 0x00, b't'],
        _ => &[0xfe],
    };
    let buf = [prefix, tail].concat();
    let motd = String::from_utf8_lossy(tail);
    let info = StatusInfo { motd: &motd, version_name: &motd, protocol: -1, online: i64::MAX, max: i64::MIN };
    for cut in [buf.len(), buf.len() / 2] {
        if let Ok(Some(FirstPacket::Legacy { ping, len })) = parse_first_packet(&buf[..cut]) {
            assert!(len <= cut);
            if ping.form == LegacyForm::V1_6 {
                let host = ping.hostname.as_deref().unwrap_or_default();
                let again = encode_legacy_ping_v1_6(ping.protocol_version.unwrap_or(0), host, ping.port.unwrap_or(0));
                assert_eq!(&again[..], &buf[..len]);
            }
            let out = encode_legacy_response(&ping, &info);
            let units = usize::from(u16::from_be_bytes([out[1], out[2]]));
            assert!(units <= 256 && out.len() == 3 + 2 * units);
        }
        if let Some(ping) = parse_legacy_bare_timeout(&buf[..cut]) {
            let _ = encode_legacy_response(&ping, &info);
        }
    }
});
