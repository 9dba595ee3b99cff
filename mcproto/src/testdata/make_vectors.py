#!/usr/bin/env python3
"""Writes the byte vectors in this folder, byte by byte from the protocol description.

Kept independent of the Rust encoders on purpose, so a bug in one does not hide in the
other. Run from this folder: `python3 make_vectors.py`.
"""
import struct
import uuid


def varint(v):
    v &= 0xFFFFFFFF
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s):
    b = s.encode("utf-8")
    return varint(len(b)) + b


def frame(body):
    return varint(len(body)) + body


def handshake(proto, host, port, state):
    return frame(varint(0) + varint(proto) + string(host) + struct.pack(">H", port) + varint(state))


def login_start(name, uid=None):
    body = varint(0) + string(name)
    if uid is not None:
        body += uuid.UUID(uid).bytes
    return frame(body)


def sig_data():
    """1.19-1.19.2 profile key: has_sig_data, expiry, public key, signature."""
    key = bytes(range(256)) + bytes(38)  # 294 bytes, the size of an X.509 RSA-2048 key
    sig = bytes((i * 7) & 0xFF for i in range(512))
    return b"\x01" + struct.pack(">q", 1732770000123) + varint(len(key)) + key + varint(len(sig)) + sig


def login_start_1_19(name, signed):
    """1.19 (759): name, has_sig_data, [expiry, key, signature]; no UUID field."""
    return frame(varint(0) + string(name) + (sig_data() if signed else b"\x00"))


def login_start_1_19_2(name, uid, signed=True):
    """1.19.1/1.19.2 (760): name, has_sig_data, [...], has_uuid, [uuid]."""
    body = varint(0) + string(name) + (sig_data() if signed else b"\x00")
    body += (b"\x01" + uuid.UUID(uid).bytes) if uid else b"\x00"
    return frame(body)


def login_start_opt_uuid(name, uid):
    """1.19.3-1.20.1 (761-763): name, has_uuid, [uuid]."""
    body = varint(0) + string(name)
    body += (b"\x01" + uuid.UUID(uid).bytes) if uid else b"\x00"
    return frame(body)


STATUS_REQUEST = frame(varint(0))
UID = "069a79f4-44e9-4726-a5be-fca90e38aaf5"


def legacy_1_6(proto, host, port):
    h = host.encode("utf-16-be")
    ch = "MC|PingHost".encode("utf-16-be")
    return (b"\xfe\x01\xfa" + struct.pack(">H", 11) + ch + struct.pack(">H", 7 + len(h))
            + bytes([proto]) + struct.pack(">H", len(host)) + h + struct.pack(">i", port))


V = {
    "vanilla_1_8_status": handshake(47, "mc.example.com", 25565, 1) + STATUS_REQUEST,
    "vanilla_1_8_login": handshake(47, "mc.example.com", 25565, 2) + login_start("Notch"),
    "vanilla_1_12_2_login": handshake(340, "play.example.net", 25565, 2) + login_start("jeb_"),
    "vanilla_1_7_10_login": handshake(5, "mc.example.com", 25565, 2) + login_start("Notch"),
    "vanilla_1_18_2_login": handshake(758, "mc.example.com", 25565, 2) + login_start("Alex"),
    "vanilla_1_19_login": handshake(759, "mc.example.com", 25565, 2) + login_start_1_19("Alex", True),
    "vanilla_1_19_unsigned_login": handshake(759, "mc.example.com", 25565, 2) + login_start_1_19("Alex", False),
    "vanilla_1_19_2_login": handshake(760, "mc.example.com", 25565, 2) + login_start_1_19_2("Alex", UID),
    "vanilla_1_19_2_no_uuid_login": handshake(760, "mc.example.com", 25565, 2)
    + login_start_1_19_2("Alex", None, signed=False),
    "vanilla_1_19_4_login": handshake(762, "mc.example.com", 25565, 2) + login_start_opt_uuid("Alex", UID),
    "vanilla_1_20_1_no_uuid_login": handshake(763, "mc.example.com", 25565, 2) + login_start_opt_uuid("Alex", None),
    "vanilla_1_20_4_status": handshake(765, "mc.example.com", 25565, 1) + STATUS_REQUEST,
    "vanilla_1_20_4_login": handshake(765, "Play.Example.NET.", 25565, 2) + login_start("Alex", UID),
    "vanilla_1_20_4_handshake_only": handshake(765, "mc.example.com", 25565, 2),
    "vanilla_1_21_login": handshake(767, "mc.example.com", 25565, 2) + login_start("Steve", UID),
    "vanilla_1_21_3_login": handshake(768, "mc.example.com", 25577, 2) + login_start("Steve", UID),
    "vanilla_1_21_4_login": handshake(769, "mc.example.com", 25565, 2) + login_start("Steve", UID),
    "vanilla_1_21_4_handshake_only": handshake(769, "mc.example.com", 25565, 2),
    "vanilla_1_21_4_transfer": handshake(769, "mc.example.com", 25565, 3) + login_start("Steve", UID),
    "forge_1_12_2_login": handshake(340, "mc.example.com\0FML\0", 25565, 2) + login_start("Dev"),
    "forge_1_16_5_login": handshake(754, "mc.example.com\0FML2\0", 25565, 2) + login_start("Dev"),
    "forge_1_20_1_login": handshake(763, "mc.example.com\0FML3\0", 25565, 2) + login_start_opt_uuid("Dev", UID),
    "tcpshield_1_20_4_login": handshake(765, "mc.example.com///203.0.113.7:51234///1732770000", 25565, 2)
    + login_start("Alex", UID),
    "unicode_host_status": handshake(765, "bücher.example", 25565, 1) + STATUS_REQUEST,
    # 254-byte body: the length prefix is FE 01, like the start of a 1.4 legacy ping.
    "modern_len_254_status": handshake(765, "a" * 246, 25565, 1) + STATUS_REQUEST,
    # Login Plugin Request on the edge's hold channel, message id 1, no data (clientbound).
    "login_plugin_request_hold": frame(varint(4) + varint(1) + string("automc:hold")),
    # Vanilla's answer for a channel it does not know: message id 1, not understood.
    "login_plugin_response_not_understood": frame(varint(2) + varint(1) + b"\x00"),
    # A modded client that claims to understand, message id 300 (two-byte VarInt), 3 bytes.
    "login_plugin_response_understood": frame(varint(2) + varint(300) + b"\x01" + b"abc"),
    "legacy_bare": b"\xfe",
    "legacy_1_4": b"\xfe\x01",
    "legacy_1_6": legacy_1_6(78, "mc.example.com", 25565),
}

if __name__ == "__main__":
    assert V["modern_len_254_status"][:3] == b"\xfe\x01\x00", V["modern_len_254_status"][:3]
    for name, data in V.items():
        with open(name + ".bin", "wb") as f:
            f.write(data)
        print(name, len(data), data[:24].hex())
