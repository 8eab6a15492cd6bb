#!/usr/bin/env python3
"""Writes the hand-made regression inputs of the vxlan_datagrams fuzz target (see
crates/fuzz-harness): datagrams a VXLAN underlay can deliver, valid and not. Usage:
fuzz/vxlan_regressions.py fuzz/regression/vxlan_datagrams"""
import os, struct, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def header(vni, flags=0x08, reserved=b"\0\0\0", last=0):
    return bytes([flags]) + reserved + struct.pack(">I", vni)[1:] + bytes([last])

def ethernet(dst, src, ethertype, payload=b""):
    return dst + src + struct.pack(">H", ethertype) + payload

GUEST = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("525400abcdef")
BROADCAST = b"\xff" * 6
IPV4_TCP = bytes.fromhex("4500002800004000400600000a00020f0a000202") + struct.pack(">HH", 40000, 80) + bytes(16)
IPV6_UDP = bytes.fromhex("6000000000081140") + bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack(">HHHH", 5353, 53, 8, 0)
FRAGMENT = bytes.fromhex("4500002800002001400600000a00020f0a000202") + bytes(20)

inputs = {
    "empty": b"",
    "header_only": header(42),
    "one_short_of_ethernet": header(42) + bytes(13),
    "smallest_frame": header(42) + ethernet(GUEST, OTHER, 0x88B5),
    "broadcast_arp": header(42) + ethernet(BROADCAST, OTHER, 0x0806, bytes(28)),
    "ipv4_tcp": header(42) + ethernet(GUEST, OTHER, 0x0800, IPV4_TCP),
    "ipv4_fragment": header(42) + ethernet(GUEST, OTHER, 0x0800, FRAGMENT),
    "ipv4_header_length_past_end": header(42) + ethernet(GUEST, OTHER, 0x0800, b"\x4f" + IPV4_TCP[1:20]),
    "ipv6_udp": header(42) + ethernet(GUEST, OTHER, 0x86DD, IPV6_UDP),
    "ipv6_truncated": header(42) + ethernet(GUEST, OTHER, 0x86DD, IPV6_UDP[:39]),
    "vni_flag_clear": header(42, flags=0x00) + ethernet(GUEST, OTHER, 0x88B5),
    "gpe_flags": header(42, flags=0x0C) + ethernet(GUEST, OTHER, 0x88B5),
    "reserved_bits_set": header(42, reserved=b"\0\x01\0") + ethernet(GUEST, OTHER, 0x88B5),
    "last_byte_set": header(42, last=1) + ethernet(GUEST, OTHER, 0x88B5),
    "largest_vni": header(0xFFFFFF) + ethernet(GUEST, OTHER, 0x88B5),
    "multicast_source": header(42) + ethernet(GUEST, BROADCAST, 0x88B5),
    "oversize_frame": header(42) + ethernet(GUEST, OTHER, 0x88B5, bytes(65536)),
    "vlan_tagged": header(42) + ethernet(GUEST, OTHER, 0x8100, struct.pack(">HH", 10, 0x0800) + IPV4_TCP),
}
for name, data in inputs.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
