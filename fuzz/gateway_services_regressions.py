#!/usr/bin/env python3
"""Writes the hand-made regression inputs of the tftp_requests, guest_names and
policy_rules fuzz targets (see crates/fuzz-harness). A gateway input is records, each a
two-byte length and the record: for tftp_requests a byte picking the port (even: 69,
odd: a transfer id) and a UDP payload; for guest_names 0 and host name options, or
another byte and a DNS query. Usage: fuzz/gateway_services_regressions.py fuzz/regression"""
import os, struct, sys

out = sys.argv[1]

def records(*items):
    return b"".join(struct.pack(">H", len(item)) + item for item in items)

def rrq(name, *options, opcode=1):
    fields = [name, b"octet", *options]
    return struct.pack(">H", opcode) + b"".join(f + b"\0" for f in fields)

def ack(block):
    return struct.pack(">HH", 4, block)

def query(name, qtype=1, flags=0x0100):
    wire = b"".join(bytes([len(l)]) + l for l in name.split(b".") if l) + b"\0"
    return struct.pack(">HHHHHH", 0x1234, flags, 1, 0, 0, 0) + wire + struct.pack(">HH", qtype, 1)

tftp = {
    "plain_transfer": records(b"\0" + rrq(b"boot"), b"\1" + ack(1), b"\1" + ack(2), b"\1" + ack(3), b"\1" + ack(4), b"\1" + ack(5), b"\1" + ack(6)),
    "options": records(b"\0" + rrq(b"boot", b"blksize", b"1468", b"tsize", b"0", b"windowsize", b"8", b"timeout", b"1"), b"\1" + ack(0), b"\1" + ack(2)),
    "huge_blksize_and_window": records(b"\0" + rrq(b"boot", b"blksize", b"65535", b"windowsize", b"65535"), b"\1" + ack(0)),
    "zero_and_odd_options": records(b"\0" + rrq(b"boot", b"blksize", b"0", b"timeout", b"0", b"windowsize", b"0"), b"\0" + rrq(b"boot", b"blksize")),
    "escapes": records(b"\0" + rrq(b"../etc/passwd"), b"\0" + rrq(b"/etc/passwd"), b"\0" + rrq(b"a\\b"), b"\0" + rrq(b"escape"), b"\0" + rrq(b"x/../../y")),
    "write_and_unknown": records(b"\0" + rrq(b"boot", opcode=2), b"\0" + struct.pack(">H", 9), b"\0" + b"\0"),
    "stale_and_future_acks": records(b"\0" + rrq(b"boot"), b"\1" + ack(0), b"\1" + ack(60000), b"\3" + ack(1)),
    "error_from_guest": records(b"\0" + rrq(b"boot"), b"\1" + struct.pack(">HH", 5, 0) + b"bye\0"),
    "no_terminator": records(b"\0" + b"\0\1boot\0octet"),
    "many_requests": records(*[b"\0" + rrq(b"boot") for _ in range(80)]),
}
names = {
    "name_then_lookups": records(b"\0" + b"alpha", b"\1" + query(b"alpha.vnet.internal"), b"\1" + query(b"alpha.vnet.internal", 28), b"\1" + query(b"15.2.0.10.in-addr.arpa", 12)),
    "host_and_records": records(b"\1" + query(b"host.vnet.internal"), b"\1" + query(b"files.vnet.internal", 255), b"\1" + query(b"a.b.vnet.internal")),
    "bad_names": records(b"\0" + b"-bad-", b"\0" + b"a.b", b"\0" + b"\xff\xfe", b"\0" + b"x" * 200, b"\0"),
    "fqdn_wire_format": records(b"\0" + b"\x05\0\0\x04beta\x03lab\0"),
    "compressed_and_multi_question": records(b"\1" + struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1", b"\1" + struct.pack(">HHHHHH", 1, 0x100, 2, 0, 0, 0) + b"\0\0\1\0\1\0\0\1\0\1"),
    "response_and_other_class": records(b"\1" + query(b"alpha.vnet.internal", flags=0x8100), b"\1" + query(b"alpha.vnet.internal")[:-1] + b"\3"),
    "ipv6_reverse": records(b"\1" + query(b"f.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.e.f.ip6.arpa", 12), b"\1" + query(b"1.2.3.4.5.in-addr.arpa", 12)),
}
policy = {
    "full_rule": b"allow=proto:tcp+from:52:54:00:12:34:56+to:192.0.2.0/24+port:80-443",
    "ipv6_and_address": b"deny=from:10.0.2.15+to:fd00::/8",
    "any": b"deny=any",
    "empty_fields": b"allow=++",
    "bad_prefix": b"deny=to:10.0.0.0/99",
    "reversed_ports": b"deny=port:443-80",
    "icmp_ports": b"deny=proto:icmp+port:1",
    "mac_with_hyphens": b"allow=from:52-54-00-12-34-56",
    "not_utf8": b"deny=\xff",
    "no_action": b"proto:tcp",
}
for target, inputs in [("tftp_requests", tftp), ("guest_names", names), ("policy_rules", policy)]:
    os.makedirs(os.path.join(out, target), exist_ok=True)
    for name, data in inputs.items():
        with open(os.path.join(out, target, name), "wb") as f:
            f.write(data)
