#!/usr/bin/env python3
"""Writes the hand-made regression inputs of the ipv6_packets fuzz target (see
crates/fuzz-harness: each record is a length, a byte picking source and destination, the
hop limit, the next header and the payload), shaped after IPv6 stack CVEs and RFC
corner cases. Usage: fuzz/ipv6_regressions.py fuzz/regression/ipv6_packets"""
import struct, ipaddress, os, sys
out = sys.argv[1]
DST = ["fec0::2","fe80::2","ff02::1","ff02::2","ff02::1:2","fec0::3","fd00::1","ff02::1:ff00:2"]
SRC = ["fec0::15","fe80::5054:ff:fe12:3456","::"]
def a(x): return ipaddress.IPv6Address(x).packed
def csum(src, dst, proto, data):
    ph = a(src)+a(dst)+struct.pack("!IxxxB", len(data), proto)
    b = ph + data + (b"\0" if len(data)%2 else b"")
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def with_csum(src, dst, proto, data, off):
    data = bytearray(data); data[off:off+2] = b"\0\0"
    c = csum(src, dst, proto, bytes(data)); data[off:off+2] = struct.pack("!H", c); return bytes(data)
def icmp(src, dst, t, code, body): return with_csum(src, dst, 58, bytes([t, code, 0, 0]) + body, 2)
def udp(src, dst, sport, dport, payload, length=None):
    l = 8 + len(payload) if length is None else length
    return with_csum(src, dst, 17, struct.pack("!HHHH", sport, dport, l, 0) + payload, 6)
def tcp_syn(src, dst, dport): 
    return with_csum(src, dst, 6, struct.pack("!HHIIBBHHH", 40000, dport, 1000, 0, 0x50, 0x02, 65535, 0, 0), 16)
def rec(dst_i, src_i, hop, nh, payload):
    r = bytes([dst_i | (src_i << 3), hop, nh]) + payload
    return struct.pack("!H", len(r)) + r
def ext(nh, body):  # body without the first two bytes; padded to 8n
    b = bytes([nh, 0]) + body
    assert len(b) % 8 == 0, len(b)
    b = bytearray(b); b[1] = len(b)//8 - 1; return bytes(b)
def pad(n):  # PadN option of total n bytes (n>=2)
    return bytes([1, n-2]) + bytes(n-2)
g, ll, un = 0, 1, 2
files = {}
# CVE-2007-2242: type 0 routing header with segments left, bouncing between addresses.
rh0 = ext(17, bytes([0, 2]) + bytes(4) + a("fd00::1") + a("fec0::2"))
files["rh0-amplification-cve-2007-2242"] = rec(0, g, 64, 43, rh0 + udp(SRC[g], "fd00::1", 40000, 9, b"x"))
# CVE-2020-16898 (Bad Neighbor): RA with an RDNSS option of even length.
rdnss_even = bytes([25, 4]) + bytes(2) + struct.pack("!I", 600) + a("fec0::3") + bytes(8)
ra = struct.pack("!BBHII", 64, 0, 1800, 0, 0)
files["ra-rdnss-even-length-cve-2020-16898"] = rec(2, ll, 255, 58, icmp(SRC[ll], DST[2], 134, 0, ra + rdnss_even))
# CVE-2020-16899: RA with a DNSSL whose labels run past the option.
dnssl = bytes([31, 2]) + bytes(2) + struct.pack("!I", 600) + bytes([63]) + b"abc" + bytes(1)
files["ra-dnssl-label-past-option-cve-2020-16899"] = rec(2, ll, 255, 58, icmp(SRC[ll], DST[2], 134, 0, ra + dnssl))
# CVE-2021-24086: nested fragment headers around destination options.
frag = lambda nh, off, m, ident: struct.pack("!BBHI", nh, 0, (off << 3) | m, ident)
files["fragments-nested-cve-2021-24086"] = rec(0, g, 64, 44, frag(44, 0, 1, 7) + frag(60, 0, 1, 7) + ext(17, pad(6)) + udp(SRC[g], DST[0], 40000, 7, b"y"*40))
files["fragment-later-offset"] = rec(0, g, 64, 44, frag(17, 100, 0, 9) + b"z" * 64)
# CVE-2017-9074 / CVE-2017-7542: long extension chains.
chain = b"".join(ext(60, pad(6)) for _ in range(40)) + ext(17, pad(6))
files["extension-chain-long-cve-2017-9074"] = rec(0, g, 64, 60, chain + udp(SRC[g], DST[0], 40000, 7, b"q"))
files["hop-by-hop-not-first"] = rec(0, g, 64, 60, ext(0, pad(6)) + ext(17, pad(6)) + udp(SRC[g], DST[0], 40000, 7, b"h"))
files["jumbogram-payload-length-zero-rfc-2675"] = rec(0, g, 64, 0, b"")
files["jumbo-option-in-ordinary-packet"] = rec(0, g, 64, 0, ext(17, bytes([0xc2, 4]) + struct.pack("!I", 70000)) + udp(SRC[g], DST[0], 40000, 7, b"j"))
files["padn-hiding-data"] = rec(0, g, 64, 60, ext(17, pad(22)) + udp(SRC[g], DST[0], 40000, 7, b"p"))
files["option-runs-past-header"] = rec(0, g, 64, 60, ext(17, bytes([1, 30, 0, 0, 0, 0])) + udp(SRC[g], DST[0], 40000, 7, b"o"))
files["unknown-option-discard"] = rec(0, g, 64, 60, ext(17, bytes([0xc5, 4, 1, 2, 3, 4])) + udp(SRC[g], DST[0], 40000, 7, b"u"))
files["extension-header-truncated"] = rec(0, g, 64, 60, bytes([17, 5, 1, 0]))
files["routing-spent-then-syn"] = rec(0, g, 64, 43, ext(6, bytes([4, 0]) + bytes(4)) + tcp_syn(SRC[g], DST[0], 8080))
files["mld-report-router-alert"] = rec(2, ll, 1, 0, ext(58, bytes([5, 2, 0, 0, 1, 0])) + icmp(SRC[ll], DST[2], 143, 0, bytes(2) + struct.pack("!H", 1) + bytes([4, 0, 0, 0]) + a("ff02::1:ff12:3456")))
# NDP options of length 0 (a loop in many stacks), and claims.
ns = lambda target, opts: icmp(SRC[ll], DST[7], 135, 0, bytes(4) + a(target) + opts)
files["ns-option-length-zero"] = rec(7, ll, 255, 58, ns("fec0::2", bytes([1, 0]) + bytes(6)))
files["ns-dad-claiming-gateway"] = rec(7, un, 255, 58, icmp("::", DST[7], 135, 0, bytes(4) + a("fec0::2")))
files["ns-hop-limit-not-255"] = rec(7, ll, 64, 58, ns("fec0::2", bytes([1, 1]) + bytes.fromhex("525400123456")))
files["rs-with-short-option"] = rec(3, ll, 255, 58, icmp(SRC[ll], DST[3], 133, 0, bytes(4) + bytes([1, 1, 0x52])))
# CVE-2020-10756 (libslirp icmp6_send_echoreply): echo requests large and truncated.
files["echo-large-cve-2020-10756"] = rec(0, g, 64, 58, icmp(SRC[g], DST[0], 128, 0, struct.pack("!HH", 1, 1) + bytes(1400)))
files["echo-truncated"] = rec(0, g, 64, 58, bytes([128, 0]))
files["echo-beyond-hop-limit-1"] = rec(6, g, 1, 58, icmp(SRC[g], DST[6], 128, 0, struct.pack("!HH", 2, 1) + b"t"))
# CVE-2021-3593 (libslirp udp6_input): UDP shorter than its header, and length lies.
files["udp-short-cve-2021-3593"] = rec(5, g, 64, 17, bytes([0x9c, 0x40, 0, 53]))
files["udp-length-longer-than-packet"] = rec(5, g, 64, 17, udp(SRC[g], DST[5], 40000, 53, b"\0" * 12, length=400))
files["udp-length-zero"] = rec(0, g, 64, 17, udp(SRC[g], DST[0], 40000, 7, b"zz", length=0))
# CVE-2017-14493 / CVE-2017-14494 (dnsmasq DHCPv6): relay messages and option lengths that lie.
def dhcp6(msg, opts): return bytes([msg, 1, 2, 3]) + opts
opt = lambda code, data, length=None: struct.pack("!HH", code, len(data) if length is None else length) + data
relay = bytes([12, 0]) + a("fec0::15") + a("fe80::1") + opt(9, dhcp6(1, opt(1, bytes(300), 0xffff)))
files["dhcpv6-relay-forward-cve-2017-14493"] = rec(4, ll, 1, 17, udp(SRC[ll], DST[4], 546, 547, relay))
files["dhcpv6-option-length-lies-cve-2017-14494"] = rec(4, ll, 1, 17, udp(SRC[ll], DST[4], 546, 547, dhcp6(11, opt(1, bytes(10)) + opt(6, bytes(2), 4000))))
files["dhcpv6-ia-na-nested-lies"] = rec(4, ll, 1, 17, udp(SRC[ll], DST[4], 546, 547, dhcp6(1, opt(1, bytes(14)) + opt(3, struct.pack("!III", 1, 0, 0) + opt(5, bytes(24), 9999)))))
files["dns-over-ipv6-compression-loop"] = rec(5, g, 64, 17, udp(SRC[g], DST[5], 40000, 53, bytes.fromhex("1234010000010000000000000c00") + bytes([0xc0, 12]) + bytes([0, 1, 0, 1])))
for name, data in files.items():
    open(os.path.join(out, name), "wb").write(data)
print(len(files), "files")
