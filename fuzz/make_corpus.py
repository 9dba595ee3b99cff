#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/seed-* from mcproto/src/testdata/*.bin and a few
hand-written PROXY headers and status packets. Run from fuzz/: `python3 make_corpus.py`.

The legacy and proxy_header targets read their first byte as a selector (see the targets);
their seeds use selector 2, "no prefix", so the seed bytes reach the parser unchanged.
"""
import glob
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "mcproto", "src", "testdata")


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def v2(fam_proto, addrs):
    return b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, fam_proto]) + struct.pack(">H", len(addrs)) + addrs


for path in sorted(glob.glob(os.path.join(TESTDATA, "*.bin"))):
    name = os.path.basename(path)[:-4]
    data = open(path, "rb").read()
    write("first_packet", name, data)
    if name.startswith("legacy"):
        write("legacy", name, b"\x02" + data)
    # A login/status handshake with a PROXY header in front.
    write("proxy_header", "v1+" + name, b"\x02PROXY TCP4 203.0.113.7 10.0.0.1 51234 25565\r\n" + data)

ipv4 = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 51234, 25565)
ipv6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack(">HH", 51234, 25565)
write("proxy_header", "v2-ipv4", b"\x02" + v2(0x11, ipv4))
write("proxy_header", "v2-ipv6", b"\x02" + v2(0x21, ipv6))
write("proxy_header", "v2-ipv4-tlv", b"\x02" + v2(0x11, ipv4 + b"\x01\x00\x02h2" + b"\x04\x00\x00"))
write("proxy_header", "v2-local", b"\x02\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
write("proxy_header", "v1-tcp6", b"\x02PROXY TCP6 2001:db8::1 2001:db8::2 51234 25565\r\n")
write("proxy_header", "v1-unknown", b"\x02PROXY UNKNOWN\r\n")

write("status_packets", "request", b"\x01\x00")
write("status_packets", "ping", b"\x09\x01" + struct.pack(">q", 1732770000123))
write("status_packets", "login-start", b"\x07\x00\x05Notch")
js = b'{"version":{"name":"1.21.4","protocol":769},"players":{"max":20,"online":1},"description":{"text":"hi"}}'
write("status_packets", "status-response", bytes([len(js) + 2, 0x00, len(js)]) + js)
write("status_packets", "status-json", js)
