//! The test peers against each other, and their packets against mcproto's recorded vectors.

use std::net::SocketAddr;

use super::*;

#[tokio::test]
async fn backend_answers_status_with_the_client_protocol() {
    let backend = McBackend::start(BackendOptions::with_motd("hello"))
        .await
        .expect("start");
    let reply = status_ping(backend.addr(), "mc.example.com", 47)
        .await
        .expect("ping");
    assert_eq!(reply.motd(), "hello");
    assert_eq!(reply.protocol(), Some(47));
    assert_eq!(
        ping_only(backend.addr(), "x", 769, -5).await.expect("pong"),
        -5
    );
    assert_eq!(backend.status_answers(), 1);
}

#[tokio::test]
async fn backend_records_login_bytes_and_echoes() {
    let backend = McBackend::start(BackendOptions::default())
        .await
        .expect("start");
    let mut conn = login_with(
        backend.addr(),
        765,
        "mc.example.com\0FML3\0",
        "Alex",
        b"tail",
    )
    .await
    .expect("login");
    assert_eq!(conn.read_exact(4).await.expect("echo"), b"tail");
    conn.send(b"more").await.expect("send");
    assert_eq!(conn.read_exact(4).await.expect("echo"), b"more");
    let logins = backend
        .wait_for_logins(1, IO_TIMEOUT)
        .await
        .expect("login seen");
    let hs = logins[0].handshake.clone().expect("handshake");
    assert_eq!(hs.address, "mc.example.com\0FML3\0");
    assert_eq!(logins[0].username.as_deref(), Some("Alex"));
    let mut want = conn.sent_first.clone();
    want.extend_from_slice(b"more");
    backend
        .wait_for(IO_TIMEOUT, |c| c[0].received == want)
        .await
        .expect("byte exact");
}

#[tokio::test]
async fn bulk_mode_checksums_both_ways_with_half_close() {
    let opts = BackendOptions {
        login: LoginMode::Bulk {
            send: 3 << 20,
            seed: 7,
        },
        ..Default::default()
    };
    let backend = McBackend::start(opts).await.expect("start");
    let conn = login(backend.addr(), "h", "Bob").await.expect("login");
    let client = conn.bulk_exchange(5 << 20, 9).await.expect("bulk");
    let server = backend
        .wait_for_bulk(1, IO_TIMEOUT)
        .await
        .expect("report")
        .remove(0);
    assert_eq!(client.received, 3 << 20);
    assert_eq!(client.received_sha256, server.sent_sha256);
    assert_eq!(server.received, 5 << 20);
    assert_eq!(server.received_sha256, client.sent_sha256);
    assert_eq!(server.sent_sha256, random_sha256(3 << 20, 7));
}

#[tokio::test]
async fn backend_parses_proxy_v2_and_answers_disconnect_and_legacy() {
    let opts = BackendOptions {
        expect_proxy_header: true,
        login: LoginMode::Disconnect("go \"away\"".into()),
        ..Default::default()
    };
    let backend = McBackend::start(opts).await.expect("start");
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1, 0xc8, 0x22, 0x63, 0xdd]);
    let mut first = header.clone();
    first.extend_from_slice(&handshake_packet(769, "h", 25565, 2));
    first.extend_from_slice(&login_start_packet(769, "Eve"));
    let mut conn = send_bytes(backend.addr(), &first).await.expect("send");
    assert_eq!(
        conn.read_disconnect().await.expect("disconnect"),
        "go \"away\""
    );
    let rec = backend
        .wait_for_logins(1, IO_TIMEOUT)
        .await
        .expect("login")
        .remove(0);
    let proxy = rec.proxy.expect("proxy header");
    assert_eq!(
        proxy.source,
        Some("203.0.113.7:51234".parse().expect("addr"))
    );
    assert_eq!(rec.received, first[header.len()..]);

    let plain = McBackend::start(BackendOptions::with_motd("old"))
        .await
        .expect("start");
    for reply in [
        legacy_ping_bare(plain.addr()).await.expect("bare"),
        legacy_ping_1_4(plain.addr()).await.expect("1.4"),
        legacy_ping_1_6(plain.addr(), "h", 25565, 78)
            .await
            .expect("1.6"),
    ] {
        assert_eq!(reply.motd(), "old");
    }
}

/// The test peers build their packets with mcproto; here the builders' arguments land in the
/// right fields, and the peers' own readers (PROXY headers via `ppp`, legacy answers) agree
/// with mcproto's encoders.
#[test]
fn test_peer_packets_and_readers_agree_with_mcproto() {
    use mcproto as p;
    for (proto, host, state) in [
        (47, "a.example", 1),
        (769, "mc.example.com\0FML3\0", 2),
        (769, "x", 3),
    ] {
        let ours = handshake_packet(proto, host, 25565, state);
        let Ok(Some(p::FirstPacket::Modern { handshake, len })) = p::parse_first_packet(&ours)
        else {
            panic!("edge does not parse {ours:02x?}");
        };
        assert_eq!(
            (
                handshake.protocol_version,
                handshake.server_address.as_str(),
                len
            ),
            (proto, host, ours.len())
        );
    }
    for proto in [47, 759, 760, 762, 769] {
        let ls = login_start_packet(proto, "Alex");
        let (got, n) = p::parse_login_start(&ls, proto)
            .expect("parses")
            .expect("complete");
        assert_eq!((got.name.as_str(), n), ("Alex", ls.len()), "{proto}");
        let want = (proto >= 760).then(|| player_uuid("Alex"));
        assert_eq!(got.uuid.map(p::format_uuid), want, "{proto}");
    }
    let src: SocketAddr = "[2001:db8::7]:51234".parse().expect("addr");
    let dst: SocketAddr = "[2001:db8::1]:25565".parse().expect("addr");
    let info = parse_proxy(&p::encode_proxy_v2(src, dst))
        .expect("parse")
        .expect("complete");
    assert_eq!((info.source, info.destination), (Some(src), Some(dst)));
    let info = parse_proxy(&p::encode_proxy_v1(src, dst))
        .expect("parse")
        .expect("complete");
    assert_eq!((info.source, info.destination), (Some(src), Some(dst)));
    let answer = p::encode_legacy_response(
        &p::LegacyPing {
            form: p::LegacyForm::V1_6,
            protocol_version: Some(78),
            hostname: None,
            port: None,
        },
        &p::StatusInfo {
            motd: "hi",
            version_name: "1.21.4",
            protocol: 769,
            online: 1,
            max: 2,
        },
    );
    let reply = decode_legacy_reply(&answer[3..]).expect("decode");
    assert_eq!(reply.fields, ["78", "1.21.4", "hi", "1", "2"]);
}

#[test]
fn proxy_v1_parses() {
    let info = parse_proxy(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nxx")
        .expect("ok")
        .expect("complete");
    assert_eq!(info.raw.len(), 32);
    assert_eq!(info.destination, Some("5.6.7.8:2".parse().expect("addr")));
    assert_eq!(parse_proxy(b"PROXY TCP4 1.2").expect("ok"), None);
}

/// mcproto's vectors were written byte by byte from the protocol description by a Python
/// script (`mcproto/src/testdata/make_vectors.py`): the independent check that the bytes
/// the test clients send are the bytes real clients send.
#[test]
fn test_peer_packets_are_the_recorded_client_bytes() {
    macro_rules! vector {
        ($name:literal) => {
            include_bytes!(concat!("../../../mcproto/src/testdata/", $name, ".bin")).as_slice()
        };
    }
    let status = |proto, host| {
        let mut v = handshake_packet(proto, host, 25565, 1);
        v.extend_from_slice(&framed(&[0x00]));
        v
    };
    let login = |proto, host, name| {
        let mut v = handshake_packet(proto, host, 25565, 2);
        v.extend_from_slice(&login_start_packet(proto, name));
        v
    };
    assert_eq!(status(47, "mc.example.com"), vector!("vanilla_1_8_status"));
    assert_eq!(
        status(765, "bücher.example"),
        vector!("unicode_host_status")
    );
    assert_eq!(
        status(765, &"a".repeat(246)),
        vector!("modern_len_254_status")
    );
    assert_eq!(
        login(5, "mc.example.com", "Notch"),
        vector!("vanilla_1_7_10_login")
    );
    assert_eq!(
        login(47, "mc.example.com", "Notch"),
        vector!("vanilla_1_8_login")
    );
    assert_eq!(
        login(340, "play.example.net", "jeb_"),
        vector!("vanilla_1_12_2_login")
    );
    assert_eq!(
        login(758, "mc.example.com", "Alex"),
        vector!("vanilla_1_18_2_login")
    );
    assert_eq!(
        login(759, "mc.example.com", "Alex"),
        vector!("vanilla_1_19_unsigned_login")
    );
    assert_eq!(
        login(754, "mc.example.com\0FML2\0", "Dev"),
        vector!("forge_1_16_5_login")
    );
    assert_eq!(
        handshake_packet(769, "mc.example.com", 25565, 2),
        vector!("vanilla_1_21_4_handshake_only")
    );
    // With a UUID (764+) only the UUID differs: the vectors carry Notch's, ours is hashed.
    let ours = login(769, "mc.example.com", "Steve");
    let theirs = vector!("vanilla_1_21_4_login");
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours[..ours.len() - 16], theirs[..theirs.len() - 16]);

    assert_eq!(
        plugin_response_packet(1, None),
        vector!("login_plugin_response_not_understood")
    );
    assert_eq!(
        plugin_response_packet(300, Some(b"abc")),
        vector!("login_plugin_response_understood")
    );
    let (id, body, len) = split_frame(vector!("login_plugin_request_hold"))
        .expect("frame")
        .expect("complete");
    let mut fields = Fields::new(&body);
    assert_eq!(
        (
            id,
            fields.varint("id").expect("id"),
            fields.string("channel").expect("channel")
        ),
        (0x04, 1, "automc:hold".to_owned())
    );
    assert_eq!(len, vector!("login_plugin_request_hold").len());
    assert_eq!(
        legacy_1_6_bytes("mc.example.com", 25565, 78),
        vector!("legacy_1_6")
    );
}
