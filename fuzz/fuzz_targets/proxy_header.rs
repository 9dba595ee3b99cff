//! PROXY protocol v1/v2 headers ahead of the player's bytes.
#![no_main]

use mcproto::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, tail)) = data.split_first() else { return };
    let prefix: &[u8] = match pick % 3 {
        0 => b"\r\n\r\n\0\r\nQUIT\n",
        1 => b"PROXY ",
        _ => b"",
    };
    let buf = [prefix, tail].concat();
    let detected = detect_proxy_header(&buf);
    match parse_proxy_header(&buf) {
        Ok(Some((header, len))) => {
            assert_eq!(detected, Some(true));
            assert!(len <= buf.len() && len <= MAX_PROXY_HEADER_BYTES);
            if let (Some(s), Some(d)) = (header.source, header.destination) {
                let v2 = encode_proxy_v2(s, d);
                let (again, n) = parse_proxy_header(&v2).expect("own header parses").expect("complete");
                assert_eq!(n, v2.len());
                assert_eq!(again.source.map(|a| a.port()), Some(s.port()));
            }
        }
        Ok(None) => assert_ne!(detected, Some(false)),
        Err(_) => {}
    }
});
