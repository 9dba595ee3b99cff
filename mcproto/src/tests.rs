//! Byte-exact vectors (testdata/*.bin, written by testdata/make_vectors.py independently of
//! the encoders here), every-prefix checks, round trips and property tests.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::legacy::encode_legacy_ping_v1_6;
use super::proxy_header::encode_proxy_v1;
use super::*;

const UUID: [u8; 16] = [
    0x06, 0x9a, 0x79, 0xf4, 0x44, 0xe9, 0x47, 0x26, 0xa5, 0xbe, 0xfc, 0xa9, 0x0e, 0x38, 0xaa, 0xf5,
];

/// What a vector's first packet is, and what follows it in the same buffer.
struct Vector {
    name: &'static str,
    bytes: &'static [u8],
    expect: Expect,
}

enum Expect {
    Modern {
        protocol_version: i32,
        address: &'static str,
        port: u16,
        next_state: NextState,
        /// What follows the handshake in the buffer.
        rest: Rest,
    },
    /// Only recognisable once no more bytes come (parse_legacy_bare_timeout).
    LegacyAtTimeout(LegacyForm),
    Legacy(LegacyPing),
}

enum Rest {
    Nothing,
    StatusRequest,
    /// Login Start naming this player and UUID.
    LoginStart(&'static str, Option<[u8; 16]>),
}

macro_rules! vector {
    ($name:literal, $expect:expr) => {
        Vector {
            name: $name,
            bytes: include_bytes!(concat!("testdata/", $name, ".bin")),
            expect: $expect,
        }
    };
}

fn modern(
    protocol_version: i32,
    address: &'static str,
    port: u16,
    next_state: NextState,
    rest: Rest,
) -> Expect {
    Expect::Modern {
        protocol_version,
        address,
        port,
        next_state,
        rest,
    }
}

fn vectors() -> Vec<Vector> {
    use NextState::*;
    const HOST: &str = "mc.example.com";
    vec![
        vector!(
            "vanilla_1_8_status",
            modern(47, HOST, 25565, Status, Rest::StatusRequest)
        ),
        vector!(
            "vanilla_1_8_login",
            modern(47, HOST, 25565, Login, Rest::LoginStart("Notch", None))
        ),
        vector!(
            "vanilla_1_12_2_login",
            modern(
                340,
                "play.example.net",
                25565,
                Login,
                Rest::LoginStart("jeb_", None)
            )
        ),
        vector!(
            "vanilla_1_7_10_login",
            modern(5, HOST, 25565, Login, Rest::LoginStart("Notch", None))
        ),
        vector!(
            "vanilla_1_18_2_login",
            modern(758, HOST, 25565, Login, Rest::LoginStart("Alex", None))
        ),
        vector!(
            "vanilla_1_19_login",
            modern(759, HOST, 25565, Login, Rest::LoginStart("Alex", None))
        ),
        vector!(
            "vanilla_1_19_unsigned_login",
            modern(759, HOST, 25565, Login, Rest::LoginStart("Alex", None))
        ),
        vector!(
            "vanilla_1_19_2_login",
            modern(
                760,
                HOST,
                25565,
                Login,
                Rest::LoginStart("Alex", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_19_2_no_uuid_login",
            modern(760, HOST, 25565, Login, Rest::LoginStart("Alex", None))
        ),
        vector!(
            "vanilla_1_19_4_login",
            modern(
                762,
                HOST,
                25565,
                Login,
                Rest::LoginStart("Alex", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_20_1_no_uuid_login",
            modern(763, HOST, 25565, Login, Rest::LoginStart("Alex", None))
        ),
        vector!(
            "vanilla_1_20_4_status",
            modern(765, HOST, 25565, Status, Rest::StatusRequest)
        ),
        vector!(
            "vanilla_1_20_4_login",
            modern(
                765,
                "Play.Example.NET.",
                25565,
                Login,
                Rest::LoginStart("Alex", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_20_4_handshake_only",
            modern(765, HOST, 25565, Login, Rest::Nothing)
        ),
        vector!(
            "vanilla_1_21_login",
            modern(
                767,
                HOST,
                25565,
                Login,
                Rest::LoginStart("Steve", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_21_3_login",
            modern(
                768,
                HOST,
                25577,
                Login,
                Rest::LoginStart("Steve", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_21_4_login",
            modern(
                769,
                HOST,
                25565,
                Login,
                Rest::LoginStart("Steve", Some(UUID))
            )
        ),
        vector!(
            "vanilla_1_21_4_handshake_only",
            modern(769, HOST, 25565, Login, Rest::Nothing)
        ),
        vector!(
            "vanilla_1_21_4_transfer",
            modern(
                769,
                HOST,
                25565,
                Transfer,
                Rest::LoginStart("Steve", Some(UUID))
            )
        ),
        vector!(
            "forge_1_12_2_login",
            modern(
                340,
                "mc.example.com\0FML\0",
                25565,
                Login,
                Rest::LoginStart("Dev", None)
            )
        ),
        vector!(
            "forge_1_16_5_login",
            modern(
                754,
                "mc.example.com\0FML2\0",
                25565,
                Login,
                Rest::LoginStart("Dev", None)
            )
        ),
        vector!(
            "forge_1_20_1_login",
            modern(
                763,
                "mc.example.com\0FML3\0",
                25565,
                Login,
                Rest::LoginStart("Dev", Some(UUID))
            )
        ),
        vector!(
            "tcpshield_1_20_4_login",
            modern(
                765,
                "mc.example.com///203.0.113.7:51234///1732770000",
                25565,
                Login,
                Rest::LoginStart("Alex", Some(UUID))
            )
        ),
        vector!(
            "unicode_host_status",
            modern(765, "bücher.example", 25565, Status, Rest::StatusRequest)
        ),
        vector!(
            "modern_len_254_status",
            modern(
                765,
                Box::leak("a".repeat(246).into_boxed_str()),
                25565,
                Status,
                Rest::StatusRequest
            )
        ),
        vector!("legacy_bare", Expect::LegacyAtTimeout(LegacyForm::Bare)),
        vector!("legacy_1_4", Expect::LegacyAtTimeout(LegacyForm::V1_4)),
        vector!(
            "legacy_1_6",
            Expect::Legacy(LegacyPing {
                form: LegacyForm::V1_6,
                protocol_version: Some(78),
                hostname: Some("mc.example.com".into()),
                port: Some(25565),
            })
        ),
    ]
}

/// Checks the complete vector and returns the first packet's length.
fn check_vector(v: &Vector) -> Option<usize> {
    let got = parse_first_packet(v.bytes);
    match &v.expect {
        Expect::Modern {
            protocol_version,
            address,
            port,
            next_state,
            rest,
        } => {
            let Ok(Some(FirstPacket::Modern { handshake, len })) = got else {
                panic!("{}: expected a handshake, got {got:?}", v.name);
            };
            assert_eq!(handshake.protocol_version, *protocol_version, "{}", v.name);
            assert_eq!(handshake.server_address, *address, "{}", v.name);
            assert_eq!(handshake.server_port, *port, "{}", v.name);
            assert_eq!(handshake.next_state, *next_state, "{}", v.name);
            // Re-encoding gives back exactly the bytes the client sent.
            assert_eq!(encode_handshake(&handshake), &v.bytes[..len], "{}", v.name);
            let after = &v.bytes[len..];
            match rest {
                Rest::Nothing => assert!(after.is_empty(), "{}", v.name),
                Rest::StatusRequest => {
                    assert_eq!(
                        parse_status_packet(after),
                        Ok(Some((StatusPacket::Request, 2)))
                    )
                }
                Rest::LoginStart(name, uuid) => {
                    let (got, n) = parse_login_start(after, *protocol_version)
                        .unwrap_or_else(|e| panic!("{}: {e}", v.name))
                        .unwrap_or_else(|| panic!("{}: login start incomplete", v.name));
                    assert_eq!(got.name, *name, "{}", v.name);
                    assert_eq!(got.uuid, *uuid, "{}", v.name);
                    assert_eq!(n, after.len(), "{}", v.name);
                    // Every shorter prefix asks for more bytes.
                    for cut in 0..after.len() {
                        assert_eq!(
                            parse_login_start(&after[..cut], *protocol_version),
                            Ok(None),
                            "{} login start cut at {cut}",
                            v.name
                        );
                    }
                }
            }
            Some(len)
        }
        Expect::LegacyAtTimeout(form) => {
            assert_eq!(got, Ok(None), "{}", v.name);
            let ping = parse_legacy_bare_timeout(v.bytes).expect("legacy at timeout");
            assert_eq!(ping.form, *form, "{}", v.name);
            assert_eq!(ping.hostname, None);
            None
        }
        Expect::Legacy(ping) => {
            assert_eq!(
                got,
                Ok(Some(FirstPacket::Legacy {
                    ping: ping.clone(),
                    len: v.bytes.len()
                })),
                "{}",
                v.name
            );
            Some(v.bytes.len())
        }
    }
}

#[test]
fn recorded_first_packets_parse_to_the_expected_values() {
    for v in vectors() {
        check_vector(&v);
    }
}

#[test]
fn check_all_prefixes() {
    for v in vectors() {
        let full = parse_first_packet(v.bytes);
        let first_len = check_vector(&v);
        for cut in 0..v.bytes.len() {
            let got = parse_first_packet(&v.bytes[..cut]);
            match first_len {
                Some(len) if cut >= len => assert_eq!(got, full, "{} cut at {cut}", v.name),
                _ => assert_eq!(got, Ok(None), "{} cut at {cut}", v.name),
            }
        }
    }
}

#[test]
fn listable_usernames_are_one_to_sixteen_characters_without_separators() {
    for ok in ["Notch", "a", "jeb_", "Ünïcode_Name", "x234567890123456"] {
        assert!(is_listable_username(ok), "{ok:?}");
    }
    for bad in [
        "",
        "x2345678901234567",
        "two words",
        "a,b",
        "tab\t",
        "nul\0",
    ] {
        assert!(!is_listable_username(bad), "{bad:?}");
    }
}

#[test]
fn stalled_legacy_pings_get_an_answer_at_timeout() {
    let v16 = include_bytes!("testdata/legacy_1_6.bin");
    for cut in 3..v16.len() {
        let ping = parse_legacy_bare_timeout(&v16[..cut]).expect("1.6 prefix");
        assert_eq!(ping.form, LegacyForm::V1_4);
    }
    assert_eq!(parse_legacy_bare_timeout(&[]), None);
    assert_eq!(parse_legacy_bare_timeout(&[0x10, 0x00]), None);
}

#[test]
fn legacy_1_6_ping_encoder_matches_the_vector() {
    assert_eq!(
        encode_legacy_ping_v1_6(78, "mc.example.com", 25565),
        include_bytes!("testdata/legacy_1_6.bin")
    );
}

#[test]
fn handshake_errors_have_reasons() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x80, 0x80, 0x80], "packet_too_large"),
        (vec![0xff, 0x07], "packet_too_large"), // 1023 + 2 > 1024
        (vec![0x03, 0x01, 0x00, 0x00], "bad_packet_id"),
        (vec![0x00], "malformed"),
        (
            vec![0x06, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80],
            "varint_too_long",
        ),
        (
            {
                let mut b = vec![0x00, 0x2f, 0x02, 0xc3, 0x28, 0x63, 0xdd, 0x02];
                b.insert(0, b.len() as u8);
                b
            },
            "invalid_utf8",
        ),
        (
            {
                let mut b = vec![0x00, 0x2f, 0x01, b'a', 0x63, 0xdd, 0x04];
                b.insert(0, b.len() as u8);
                b
            },
            "bad_next_state",
        ),
        (
            {
                let mut b = vec![0x00, 0x2f, 0x01, b'a', 0x63, 0xdd, 0x02, 0x00];
                b.insert(0, b.len() as u8);
                b
            },
            "malformed",
        ),
        (
            {
                let mut b = vec![0x00, 0x2f, 0x05, b'a', 0x63, 0xdd, 0x02];
                b.insert(0, b.len() as u8);
                b
            },
            "malformed",
        ),
    ];
    for (bytes, reason) in cases {
        let err = parse_first_packet(&bytes).expect_err(&format!("{bytes:02x?}"));
        assert_eq!(err.reason(), reason, "{bytes:02x?}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

fn handshake_with_address(address: &str) -> Vec<u8> {
    encode_handshake(&Handshake {
        protocol_version: 765,
        server_address: address.into(),
        server_port: 25565,
        next_state: NextState::Login,
    })
}

#[test]
fn address_of_255_characters_is_accepted_and_256_refused() {
    let ok = handshake_with_address(&"a".repeat(255));
    assert!(matches!(
        parse_first_packet(&ok),
        Ok(Some(FirstPacket::Modern { .. }))
    ));
    let long = handshake_with_address(&"a".repeat(256));
    assert_eq!(
        parse_first_packet(&long),
        Err(ProtocolError::AddressTooLong)
    );
    // 255 three-byte characters fit (765 bytes); one more does not.
    let wide = handshake_with_address(&"€".repeat(255));
    assert!(matches!(
        parse_first_packet(&wide),
        Ok(Some(FirstPacket::Modern { .. }))
    ));
    let wider = handshake_with_address(&"€".repeat(256));
    assert_eq!(
        parse_first_packet(&wider),
        Err(ProtocolError::AddressTooLong)
    );
    // 200 four-byte characters are 400 UTF-16 units: too long although only 800 bytes.
    let astral = handshake_with_address(&"😀".repeat(130));
    assert_eq!(
        parse_first_packet(&astral),
        Err(ProtocolError::AddressTooLong)
    );
}

#[test]
fn a_hostile_length_is_refused_before_its_bytes_arrive() {
    // 2 MiB - 1 claimed, nothing else sent: refused at once, nothing buffered.
    assert_eq!(
        parse_first_packet(&[0xff, 0xff, 0x7f]),
        Err(ProtocolError::PacketTooLarge {
            max: MAX_HANDSHAKE_BYTES - 2
        })
    );
    assert!(parse_status_response(&[0xff, 0xff, 0x7f], 1 << 20).is_err());
    assert!(parse_login_start(&[0xff, 0xff, 0x03], 765).is_err());
}

#[test]
fn legacy_1_6_errors() {
    let good = encode_legacy_ping_v1_6(78, "mc.example.com", 25565);
    let mut channel = good.clone();
    channel[6] = b'X'; // "MC|PingHost" → "MX|…"
    assert_eq!(
        parse_first_packet(&channel).map_err(|e| e.reason()),
        Err("malformed")
    );
    let mut data_len = good.clone();
    data_len[28] = data_len[28].wrapping_add(2);
    assert_eq!(
        parse_first_packet(&data_len).map_err(|e| e.reason()),
        Err("malformed")
    );
    let long = encode_legacy_ping_v1_6(78, &"a".repeat(256), 25565);
    assert_eq!(
        parse_first_packet(&long[..40]),
        Err(ProtocolError::AddressTooLong)
    );
    let mut surrogate = good.clone();
    surrogate[32] = 0xd8; // lone high surrogate in the hostname
    assert_eq!(
        parse_first_packet(&surrogate),
        Err(ProtocolError::InvalidUtf8)
    );
    let mut port = good;
    let n = port.len();
    port[n - 4] = 0x01; // port 0x01006 3dd > 65535
    assert_eq!(
        parse_first_packet(&port).map_err(|e| e.reason()),
        Err("malformed")
    );
}

#[test]
fn legacy_answers_are_byte_exact() {
    let info = StatusInfo {
        motd: "A§b\nc",
        version_name: "1.20.4",
        protocol: 765,
        online: 3,
        max: 20,
    };
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_be_bytes).collect() };
    let bare = LegacyPing {
        form: LegacyForm::Bare,
        protocol_version: None,
        hostname: None,
        port: None,
    };
    let text = "Ab c§3§20";
    let mut want = vec![0xff, 0x00, text.encode_utf16().count() as u8];
    want.extend(utf16(text));
    assert_eq!(encode_legacy_response(&bare, &info), want);

    let v16 = LegacyPing {
        form: LegacyForm::V1_6,
        protocol_version: Some(78),
        hostname: Some("mc.example.com".into()),
        port: Some(25565),
    };
    let text = "§1\u{0}78\u{0}1.20.4\u{0}A§b c\u{0}3\u{0}20";
    let mut want = vec![0xff, 0x00, text.encode_utf16().count() as u8];
    want.extend(utf16(text));
    assert_eq!(encode_legacy_response(&v16, &info), want);

    let v14 = LegacyPing {
        form: LegacyForm::V1_4,
        ..bare
    };
    let got = encode_legacy_response(&v14, &info);
    assert_eq!(
        &got[..9],
        &[0xff, 0x00, 0x18, 0x00, 0xa7, 0x00, b'1', 0x00, 0x00]
    );
    assert!(got.ends_with(&utf16("765\u{0}1.20.4\u{0}A§b c\u{0}3\u{0}20")));
}

#[test]
fn legacy_answer_stays_within_256_units() {
    let motd = "é".repeat(1000);
    let info = StatusInfo {
        motd: &motd,
        version_name: "x",
        protocol: 1,
        online: 1,
        max: 2,
    };
    for form in [LegacyForm::Bare, LegacyForm::V1_4, LegacyForm::V1_6] {
        let ping = LegacyPing {
            form,
            protocol_version: None,
            hostname: None,
            port: None,
        };
        let out = encode_legacy_response(&ping, &info);
        let units = usize::from(u16::from_be_bytes([out[1], out[2]]));
        assert!(units <= 256);
        assert_eq!(out.len(), 3 + 2 * units);
    }
}

#[test]
fn status_phase_packets_round_trip() {
    assert_eq!(encode_status_request(), [0x01, 0x00]);
    assert_eq!(encode_ping(1), [0x09, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x01]);
    let mut two = encode_status_request();
    two.extend(encode_ping(-42));
    assert_eq!(
        parse_status_packet(&two),
        Ok(Some((StatusPacket::Request, 2)))
    );
    assert_eq!(
        parse_status_packet(&two[2..]),
        Ok(Some((StatusPacket::Ping(-42), 10)))
    );
    assert_eq!(parse_pong(&encode_pong(i64::MIN)), Ok(Some((i64::MIN, 10))));
    assert_eq!(
        parse_status_packet(&[0x01, 0x05]),
        Err(ProtocolError::BadPacketId(5))
    );
    assert_eq!(
        parse_status_packet(&[0x41]),
        Err(ProtocolError::PacketTooLarge { max: 64 })
    );
    assert_eq!(
        parse_pong(&[0x01, 0x00]),
        Err(ProtocolError::BadPacketId(0))
    );
}

#[test]
fn status_response_round_trips_and_is_capped() {
    let json = status_json(&StatusInfo {
        motd: "Hello \"world\"\n§aline 2",
        version_name: "automc",
        protocol: 769,
        online: 0,
        max: 100,
    });
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["version"]["protocol"], 769);
    assert_eq!(v["version"]["name"], "automc");
    assert_eq!(v["players"]["max"], 100);
    assert_eq!(v["players"]["online"], 0);
    assert_eq!(v["description"]["text"], "Hello \"world\"\n§aline 2");
    let packet = encode_status_response(&json);
    assert_eq!(
        parse_status_response(&packet, 1 << 16),
        Ok(Some((json.clone(), packet.len())))
    );
    assert_eq!(
        parse_status_response(&packet[..packet.len() - 1], 1 << 16),
        Ok(None)
    );
    assert_eq!(
        parse_status_response(&packet, 16),
        Err(ProtocolError::PacketTooLarge { max: 16 })
    );
}

#[test]
fn login_disconnect_is_a_json_text_component() {
    let msg = "server is \"offline\"\\ try later\n";
    let packet = encode_login_disconnect(msg);
    // Frame: length, id 0x00, String(JSON).
    let (json, n) = parse_status_response(&packet, 4096)
        .expect("parse")
        .expect("complete");
    assert_eq!(n, packet.len());
    assert_eq!(json, r#"{"text":"server is \"offline\"\\ try later\n"}"#);
    assert_eq!(
        encode_login_disconnect("hi"),
        b"\x0f\x00\x0d{\"text\":\"hi\"}"
    );
}

#[test]
fn stale_marker_is_added_to_every_description_shape() {
    let note = "(cached)";
    let text_of = |json: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        v["description"].to_string()
    };
    let s = mark_status_stale(
        r#"{"description":"Hi","version":{"name":"x","protocol":1}}"#,
        note,
    )
    .expect("string description");
    assert!(
        text_of(&s).contains("Hi") && text_of(&s).contains(note),
        "{s}"
    );
    assert!(s.contains(r#""protocol":1"#));
    let s = mark_status_stale(r#"{"description":{"text":"Hi","color":"red"}}"#, note).expect("obj");
    assert!(
        text_of(&s).contains(r#""color":"red""#) && text_of(&s).contains(note),
        "{s}"
    );
    let s = mark_status_stale(r#"{"description":[{"text":"A"},"B"]}"#, note).expect("array");
    assert!(
        text_of(&s).contains("\"B\"") && text_of(&s).contains(note),
        "{s}"
    );
    let s = mark_status_stale(r#"{"players":{"max":1,"online":0}}"#, note).expect("none");
    assert!(text_of(&s).contains(note));
    assert_eq!(mark_status_stale("not json", note), None);
    assert_eq!(mark_status_stale("[1,2]", note), None);
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn proxy_v1_and_v2_headers_parse_with_every_prefix_incomplete() {
    let v4 = (addr("203.0.113.7:51234"), addr("10.0.0.1:25565"));
    let v6 = (addr("[2001:db8::1]:51234"), addr("[2001:db8::2]:25565"));
    for (src, dst) in [v4, v6] {
        for header in [encode_proxy_v1(src, dst), encode_proxy_v2(src, dst)] {
            let mut buf = header.clone();
            buf.extend_from_slice(&[0x10, 0x00, 0x2f]);
            let want = ProxyHeader {
                source: Some(src),
                destination: Some(dst),
            };
            assert_eq!(parse_proxy_header(&buf), Ok(Some((want, header.len()))));
            for cut in 0..header.len() {
                assert_eq!(
                    parse_proxy_header(&buf[..cut]),
                    Ok(None),
                    "{header:02x?} cut {cut}"
                );
                if cut > 0 {
                    assert_ne!(detect_proxy_header(&buf[..cut]), Some(false));
                }
            }
            assert_eq!(detect_proxy_header(&buf), Some(true));
        }
    }
}

#[test]
fn proxy_v2_byte_exact_and_local_and_unknown() {
    let got = encode_proxy_v2(addr("127.0.0.1:1000"), addr("127.0.0.2:25565"));
    let want: Vec<u8> = [
        &b"\r\n\r\n\0\r\nQUIT\n"[..],
        &[
            0x21, 0x11, 0x00, 0x0c, 127, 0, 0, 1, 127, 0, 0, 2, 0x03, 0xe8, 0x63, 0xdd,
        ],
    ]
    .concat();
    assert_eq!(got, want);
    let mixed = encode_proxy_v2(addr("127.0.0.1:1000"), addr("[::1]:25565"));
    let (h, _) = parse_proxy_header(&mixed)
        .expect("mixed")
        .expect("complete");
    assert_eq!(h.source, Some(addr("[::ffff:127.0.0.1]:1000")));

    let local = [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0x00, 0x00, 0x00]].concat();
    let none = ProxyHeader {
        source: None,
        destination: None,
    };
    assert_eq!(parse_proxy_header(&local), Ok(Some((none, 16))));
    assert_eq!(
        parse_proxy_header(b"PROXY UNKNOWN\r\nrest"),
        Ok(Some((none, 15)))
    );
}

#[test]
fn proxy_header_errors() {
    assert_eq!(detect_proxy_header(&[0x10, 0x00]), Some(false));
    assert_eq!(detect_proxy_header(b"PRO"), None);
    assert_eq!(detect_proxy_header(b"\r\n\r\n"), None);
    assert_eq!(detect_proxy_header(&[]), None);
    assert_eq!(
        parse_proxy_header(&[0x10, 0x00]),
        Err(ProxyHeaderError::NotProxyHeader)
    );
    let huge = [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x21, 0x11, 0xff, 0xff]].concat();
    assert_eq!(
        parse_proxy_header(&huge),
        Err(ProxyHeaderError::TooLarge(16 + 65535))
    );
    assert!(matches!(
        parse_proxy_header(b"PROXY TCP4 1.2.3.4\r\n"),
        Err(ProxyHeaderError::Invalid { version: 1, .. })
    ));
    assert!(matches!(
        parse_proxy_header(b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n"),
        Err(ProxyHeaderError::Invalid { version: 1, .. })
    ));
    assert!(parse_proxy_header(&[b'P'; 200]).is_err());
    let long_v1 = [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat();
    assert!(parse_proxy_header(&long_v1).is_err());
}

fn arb_handshake() -> impl Strategy<Value = Handshake> {
    (
        any::<i32>(),
        "\\PC{0,255}",
        any::<u16>(),
        prop_oneof![
            Just(NextState::Status),
            Just(NextState::Login),
            Just(NextState::Transfer)
        ],
    )
        .prop_filter("vanilla address limit", |(_, a, _, _)| {
            a.encode_utf16().count() <= 255
        })
        .prop_map(
            |(protocol_version, server_address, server_port, next_state)| Handshake {
                protocol_version,
                server_address,
                server_port,
                next_state,
            },
        )
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(buf in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let first = parse_first_packet(&buf);
        if let Ok(Some(FirstPacket::Modern { len, .. } | FirstPacket::Legacy { len, .. })) = &first {
            prop_assert!(*len <= buf.len());
        }
        // A full buffer always gets an answer: the edge never waits beyond its cap.
        if buf.len() >= MAX_HANDSHAKE_BYTES {
            prop_assert_ne!(first, Ok(None));
        }
        let _ = parse_legacy_bare_timeout(&buf);
        let _ = parse_status_packet(&buf);
        for version in [47, 759, 760, 762, 765] {
            let _ = parse_login_start(&buf, version);
        }
        let _ = parse_status_response(&buf, 1 << 16);
        let _ = parse_pong(&buf);
        let _ = detect_proxy_header(&buf);
        if let Ok(Some((_, len))) = parse_proxy_header(&buf) {
            prop_assert!(len <= buf.len());
        }
    }

    #[test]
    fn prefixed_garbage_never_panics(
        prefix in prop_oneof![
            Just(vec![0xfe, 0x01, 0xfa]),
            Just(b"PROXY ".to_vec()),
            Just(b"\r\n\r\n\0\r\nQUIT\n".to_vec()),
            Just(encode_legacy_ping_v1_6(78, "a", 1)[..29].to_vec()),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let buf = [prefix, tail].concat();
        let _ = parse_first_packet(&buf);
        let _ = parse_legacy_bare_timeout(&buf);
        let _ = parse_proxy_header(&buf);
    }

    #[test]
    fn handshakes_round_trip_and_reencode_to_the_same_bytes(h in arb_handshake(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let bytes = encode_handshake(&h);
        let mut buf = bytes.clone();
        buf.extend_from_slice(&tail);
        match parse_first_packet(&buf) {
            Ok(Some(FirstPacket::Modern { handshake, len })) => {
                prop_assert_eq!(len, bytes.len());
                prop_assert_eq!(encode_handshake(&handshake), bytes);
                prop_assert_eq!(handshake, h);
            }
            // Long (multi-byte) addresses can exceed the 1024-byte frame cap.
            Err(ProtocolError::PacketTooLarge { .. }) => prop_assert!(bytes.len() > MAX_HANDSHAKE_BYTES),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn what_parses_reencodes_to_the_same_bytes(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Vanilla accepts over-long VarInts; everything else must re-encode byte for byte.
        if let Ok(Some(FirstPacket::Modern { handshake, len })) = parse_first_packet(&buf) {
            let again = encode_handshake(&handshake);
            if again.len() == len {
                prop_assert_eq!(&again[..], &buf[..len]);
            } else {
                prop_assert!(again.len() < len);
            }
        }
        if let Ok(Some((p, len))) = parse_status_packet(&buf) {
            let again = match p { StatusPacket::Request => encode_status_request(), StatusPacket::Ping(v) => encode_ping(v) };
            prop_assert!(again.len() <= len);
            if again.len() == len { prop_assert_eq!(&again[..], &buf[..len]); }
        }
    }

    #[test]
    fn legacy_1_6_round_trips(proto in any::<u8>(), host in "\\PC{0,255}", port in any::<u16>()) {
        prop_assume!(host.encode_utf16().count() <= 255);
        let bytes = encode_legacy_ping_v1_6(proto, &host, port);
        let want = LegacyPing { form: LegacyForm::V1_6, protocol_version: Some(proto), hostname: Some(host), port: Some(port) };
        prop_assert_eq!(parse_first_packet(&bytes), Ok(Some(FirstPacket::Legacy { ping: want, len: bytes.len() })));
        prop_assert!(bytes.len() <= MAX_LEGACY_PING_BYTES);
    }

    #[test]
    fn status_login_and_disconnect_round_trip(payload in any::<i64>(), name in "[A-Za-z0-9_]{1,16}", msg in "\\PC{0,200}", json in "\\PC{0,300}") {
        prop_assert_eq!(parse_pong(&encode_pong(payload)), Ok(Some((payload, 10))));
        let login = LoginStart { name, uuid: None };
        let ls = encode_login_start(47, &login);
        prop_assert_eq!(parse_login_start(&ls, 47), Ok(Some((login, ls.len()))));
        let d = encode_login_disconnect(&msg);
        let (text, _) = parse_status_response(&d, 1 << 16).expect("parses").expect("complete");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        prop_assert_eq!(v["text"].as_str(), Some(msg.as_str()));
        let r = encode_status_response(&json);
        prop_assert_eq!(parse_status_response(&r, 1 << 16), Ok(Some((json, r.len()))));
    }

    #[test]
    fn proxy_v2_round_trips(src in any::<SocketAddr>(), dst in any::<SocketAddr>()) {
        let bytes = encode_proxy_v2(src, dst);
        let (h, len) = parse_proxy_header(&bytes).expect("parses").expect("complete");
        prop_assert_eq!(len, bytes.len());
        let norm = |a: SocketAddr| match (src, dst) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => a,
            _ => SocketAddr::new(match a.ip() { std::net::IpAddr::V4(v) => v.to_ipv6_mapped().into(), ip => ip }, a.port()),
        };
        prop_assert_eq!(h.source, Some(norm(src)));
        prop_assert_eq!(h.destination, Some(norm(dst)));
        let v1 = encode_proxy_v1(src, dst);
        let (h1, len1) = parse_proxy_header(&v1).expect("v1 parses").expect("v1 complete");
        prop_assert_eq!(len1, v1.len());
        prop_assert_eq!(h1.source, Some(norm(src)));
    }
}

#[test]
fn modern_frames_whose_length_starts_with_fe_are_not_legacy() {
    // 382-byte body: length prefix FE 02.
    let address = "é".repeat(187);
    let bytes = handshake_with_address(&address);
    assert_eq!(&bytes[..2], &[0xfe, 0x02]);
    let Ok(Some(FirstPacket::Modern { handshake, len })) = parse_first_packet(&bytes) else {
        panic!("not parsed as a handshake");
    };
    assert_eq!(
        (handshake.server_address.as_str(), len),
        (address.as_str(), bytes.len())
    );
    assert_eq!(parse_first_packet(&[0xfe, 0x02, 0x00]), Ok(None));
}

#[test]
fn tcpshield_address_with_a_long_signature_is_accepted() {
    // TCPShield appends ///client-ip:port///timestamp///base64-signature,
    // well past 255 characters; only the hostname before it is capped.
    let address = format!(
        "play.example.com///203.0.113.9:53122///1700000000///{}",
        "A".repeat(344)
    );
    assert!(address.len() > 255);
    let bytes = handshake_with_address(&address);
    match parse_first_packet(&bytes) {
        Ok(Some(FirstPacket::Modern { handshake, len })) => {
            assert_eq!(handshake.server_address, address);
            assert_eq!(len, bytes.len());
        }
        other => panic!("expected a handshake, got {other:?}"),
    }
    let long_host = format!("{}///203.0.113.9:53122", "a".repeat(256));
    assert_eq!(
        parse_first_packet(&handshake_with_address(&long_host)),
        Err(ProtocolError::AddressTooLong)
    );
}

/// One protocol version of each Login Start layout.
const LOGIN_LAYOUTS: [i32; 6] = [47, 759, 760, 762, 765, 0x4000_0100];

proptest! {
    #[test]
    fn login_start_round_trips_in_every_layout(
        name in "[A-Za-z0-9_]{1,16}",
        uuid in proptest::option::of(any::<[u8; 16]>()),
        layout in 0..LOGIN_LAYOUTS.len(),
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let version = LOGIN_LAYOUTS[layout];
        let login = LoginStart { name, uuid };
        let bytes = encode_login_start(version, &login);
        let (got, n) = parse_login_start(&bytes, version).expect("parses").expect("complete");
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(&got.name, &login.name);
        // Before 1.19.1 the packet has no UUID; from 1.20.2 it always has one.
        let want_uuid = match version {
            ..=759 => None,
            760..=763 => uuid,
            _ => Some(uuid.unwrap_or_default()),
        };
        prop_assert_eq!(got.uuid, want_uuid);
        // What follows the packet in the buffer is not part of it.
        let mut more = bytes.clone();
        more.extend_from_slice(&trailing);
        prop_assert_eq!(parse_login_start(&more, version), Ok(Some((got, n))));
    }
}

#[test]
fn login_start_refuses_long_names_bad_ids_and_bad_booleans() {
    let long = LoginStart {
        name: "a".repeat(17),
        uuid: None,
    };
    assert!(parse_login_start(&encode_login_start(47, &long), 47).is_err());
    // Status request id 0x00 frame with a different id.
    assert_eq!(
        parse_login_start(&[0x02, 0x01, 0x00], 47),
        Err(ProtocolError::BadPacketId(1))
    );
    // 1.19.3 layout: has-uuid must be 0 or 1.
    let mut b = vec![0x00, 0x04];
    b.extend_from_slice(b"Alex");
    b.push(0x07);
    b.insert(0, b.len() as u8);
    assert!(parse_login_start(&b, 762).is_err());
    // 1.19: a key longer than vanilla's 512 bytes is refused before it is read.
    let mut b = vec![0x00, 0x04];
    b.extend_from_slice(b"Alex");
    b.push(0x01);
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&[0x81, 0x04]); // 513
    let mut framed = Vec::new();
    write_varint(&mut framed, b.len() as i32);
    framed.extend_from_slice(&b);
    assert!(parse_login_start(&framed, 759).is_err());
}

#[test]
fn uuids_print_hyphenated() {
    assert_eq!(format_uuid(UUID), "069a79f4-44e9-4726-a5be-fca90e38aaf5");
    let l = LoginStart {
        name: "Notch".into(),
        uuid: None,
    };
    assert_eq!(l.uuid_string(), "");
}

#[test]
fn a_rewritten_handshake_keeps_the_forge_marker_port_and_next_state() {
    // Recorded: protocol 767, "play.example.com\0FML3\0", port 25565, login.
    let mut sent = vec![0x1d, 0x00, 0xff, 0x05, 0x16];
    sent.extend_from_slice(b"play.example.com\0FML3\0");
    sent.extend_from_slice(&[0x63, 0xdd, 0x02]);
    let (h, len) = match parse_first_packet(&sent) {
        Ok(Some(FirstPacket::Modern { handshake, len })) => (handshake, len),
        other => panic!("{other:?}"),
    };
    assert_eq!(len, sent.len());
    let out = encode_rewritten_handshake(&h, "lobby.internal");
    let mut want = vec![0x1b, 0x00, 0xff, 0x05, 0x14];
    want.extend_from_slice(b"lobby.internal\0FML3\0");
    want.extend_from_slice(&[0x63, 0xdd, 0x02]);
    assert_eq!(out, want);
    // A forwarding suffix is kept too; a plain address is simply replaced.
    let fwd = Handshake {
        protocol_version: 47,
        server_address: "a.example.com///1.2.3.4:5///sig".into(),
        server_port: 25565,
        next_state: NextState::Status,
    };
    assert_eq!(with_host(&fwd, "b").server_address, "b///1.2.3.4:5///sig");
    let plain = Handshake {
        server_address: "a.example.com".into(),
        ..fwd
    };
    let again = encode_rewritten_handshake(&plain, "b.internal");
    match parse_first_packet(&again) {
        Ok(Some(FirstPacket::Modern { handshake, .. })) => {
            assert_eq!(handshake.server_address, "b.internal");
            assert_eq!(handshake.server_port, 25565);
            assert_eq!(handshake.next_state, NextState::Status);
            assert_eq!(handshake.protocol_version, 47);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_favicon_goes_into_the_status_as_a_base64_data_url() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    let info = StatusInfo {
        motd: "hi",
        version_name: "automc",
        protocol: 767,
        online: 1,
        max: 20,
    };
    let v: serde_json::Value =
        serde_json::from_str(&status_json_with_favicon(&info, b"\x89PNG")).expect("json");
    assert_eq!(v["favicon"], "data:image/png;base64,iVBORw==");
    assert_eq!(v["players"]["max"], 20);
    let none: serde_json::Value =
        serde_json::from_str(&status_json_with_favicon(&info, b"")).expect("json");
    assert!(none.get("favicon").is_none());
    assert_eq!(status_json_with_favicon(&info, b""), status_json(&info));
}

const PLUGIN_REQUEST_HOLD: &[u8] = include_bytes!("testdata/login_plugin_request_hold.bin");
const PLUGIN_RESPONSE_NOT_UNDERSTOOD: &[u8] =
    include_bytes!("testdata/login_plugin_response_not_understood.bin");
const PLUGIN_RESPONSE_UNDERSTOOD: &[u8] =
    include_bytes!("testdata/login_plugin_response_understood.bin");

#[test]
fn login_plugin_request_matches_the_recorded_vector() {
    assert_eq!(
        encode_login_plugin_request(1, "automc:hold", &[]),
        PLUGIN_REQUEST_HOLD
    );
    let (req, n) = parse_login_plugin_request(PLUGIN_REQUEST_HOLD)
        .expect("parse")
        .expect("complete");
    assert_eq!(n, PLUGIN_REQUEST_HOLD.len());
    assert_eq!(
        req,
        LoginPluginRequest {
            message_id: 1,
            channel: "automc:hold",
            data: &[],
        }
    );
    for cut in 0..PLUGIN_REQUEST_HOLD.len() {
        assert_eq!(
            parse_login_plugin_request(&PLUGIN_REQUEST_HOLD[..cut]),
            Ok(None)
        );
    }
}

#[test]
fn login_plugin_responses_match_the_recorded_vectors_with_every_prefix_incomplete() {
    let cases: [(&[u8], LoginPluginResponse<'_>); 2] = [
        (
            PLUGIN_RESPONSE_NOT_UNDERSTOOD,
            LoginPluginResponse {
                message_id: 1,
                understood: false,
                data: &[],
            },
        ),
        (
            PLUGIN_RESPONSE_UNDERSTOOD,
            LoginPluginResponse {
                message_id: 300,
                understood: true,
                data: b"abc",
            },
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            parse_login_plugin_response(bytes),
            Ok(Some((want, bytes.len())))
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_login_plugin_response(&bytes[..cut]),
                Ok(None),
                "{cut}"
            );
        }
        let data = want.understood.then_some(want.data);
        assert_eq!(encode_login_plugin_response(want.message_id, data), bytes);
    }
    // What follows the response in the buffer is left alone.
    let mut two = PLUGIN_RESPONSE_NOT_UNDERSTOOD.to_vec();
    two.extend_from_slice(PLUGIN_RESPONSE_UNDERSTOOD);
    let (_, n) = parse_login_plugin_response(&two)
        .expect("parse")
        .expect("complete");
    assert_eq!(n, PLUGIN_RESPONSE_NOT_UNDERSTOOD.len());
}

#[test]
fn anything_but_a_small_plugin_response_is_refused_as_soon_as_it_shows() {
    // Another login packet (Login Start again, Encryption Response, Login Acknowledged):
    // refused on its id, before the rest of it arrives.
    for id in [0x00u8, 0x01, 0x03, 0x04] {
        assert_eq!(
            parse_login_plugin_response(&[0x20, id]),
            Err(ProtocolError::BadPacketId(i32::from(id)))
        );
    }
    // A length beyond the cap is refused on the prefix alone.
    let mut big = Vec::new();
    write_varint(&mut big, MAX_LOGIN_PLUGIN_RESPONSE_BYTES as i32 + 1);
    assert_eq!(
        parse_login_plugin_response(&big),
        Err(ProtocolError::PacketTooLarge {
            max: MAX_LOGIN_PLUGIN_RESPONSE_BYTES
        })
    );
    assert!(matches!(
        parse_login_plugin_response(&[0x04, 0x02, 0x01, 0x00, 0x09]),
        Err(ProtocolError::Malformed(_))
    ));
    assert!(matches!(
        parse_login_plugin_response(&[0x03, 0x02, 0x01, 0x02]),
        Err(ProtocolError::Malformed(_))
    ));
    assert!(matches!(
        parse_login_plugin_response(&[0x02, 0x02, 0x01]),
        Err(ProtocolError::Malformed(_))
    ));
    // Garbage that is not even a frame.
    assert!(parse_login_plugin_response(&[0x80, 0x80, 0x80, 0x80]).is_err());
    assert!(parse_login_plugin_response(&[0x00]).is_err());
}

#[test]
fn clients_from_1_13_answer_plugin_requests() {
    assert!(!answers_login_plugin_requests(340)); // 1.12.2
    assert!(!answers_login_plugin_requests(392));
    assert!(answers_login_plugin_requests(393)); // 1.13
    assert!(answers_login_plugin_requests(769)); // 1.21.4
    assert!(answers_login_plugin_requests(0x4000_00f0)); // a snapshot
    assert!(!answers_login_plugin_requests(-1));
}

proptest! {
    #[test]
    fn plugin_responses_round_trip_and_garbage_never_panics(
        id in any::<i32>(),
        data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        junk in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let bytes = encode_login_plugin_response(id, data.as_deref());
        let (r, n) = parse_login_plugin_response(&bytes).expect("parse").expect("complete");
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(r.message_id, id);
        prop_assert_eq!(r.understood, data.is_some());
        prop_assert_eq!(r.data, data.as_deref().unwrap_or_default());
        let _ = parse_login_plugin_response(&junk);
        let _ = parse_login_plugin_request(&junk);
    }
}

#[test]
fn player_counts_replace_the_backends_own_and_keep_the_rest() {
    let v = |json: &str| -> serde_json::Value { serde_json::from_str(json).expect("json") };
    let s = with_player_counts(
        r#"{"players":{"max":20,"online":3,"sample":[{"name":"a","id":"x"}]},"description":"Hi"}"#,
        7,
        10,
    )
    .expect("object");
    let s = v(&s);
    assert_eq!(
        (
            s["players"]["online"].as_i64(),
            s["players"]["max"].as_i64()
        ),
        (Some(7), Some(10))
    );
    assert_eq!(s["players"]["sample"][0]["name"], "a");
    assert_eq!(s["description"], "Hi");
    let s = v(&with_player_counts(r#"{"players":null}"#, 1, 2).expect("no players object"));
    assert_eq!(s["players"]["max"], 2);
    assert_eq!(with_player_counts("[]", 1, 2), None);
}
