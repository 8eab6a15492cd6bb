#!/usr/bin/env python3
"""Writes the hand-made regression inputs of the descriptor_chains fuzz target (see
crates/fuzz-harness): four bytes (ring size as a power of two, mode: bit 0 mergeable
buffers, bit 1 receive buffers lent for the frame's payload; outgoing frame length) and then the guest memory image, whose descriptor table is at 0 and whose
available ring is at 0x1000. Each input is a way a hostile or broken virtio driver can
describe its buffers. Usage: fuzz/descriptor_chain_regressions.py fuzz/regression/descriptor_chains"""
import os, struct, sys

NEXT, WRITE, INDIRECT = 1, 2, 4
out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def image(descriptors, heads, avail_idx=None, shift=4, mergeable=1, frame_len=100):
    memory = bytearray(0x1000 + 4 + 2 * len(heads))
    for i, (addr, length, flags, nxt) in enumerate(descriptors):
        memory[16 * i:16 * i + 16] = struct.pack("<QIHH", addr, length, flags, nxt)
    idx = len(heads) if avail_idx is None else avail_idx
    memory[0x1000:0x1004] = struct.pack("<HH", 0, idx)
    for i, head in enumerate(heads):
        memory[0x1004 + 2 * i:0x1006 + 2 * i] = struct.pack("<H", head)
    return bytes([shift, mergeable]) + struct.pack("<H", frame_len) + bytes(memory)

cases = {
    "two-descriptor-loop": image([(0x4000, 12, NEXT, 1), (0x4000, 100, NEXT, 0)], [0]),
    "self-loop": image([(0x4000, 64, NEXT, 0)], [0]),
    "next-past-the-table": image([(0x4000, 12, NEXT, 200)], [0]),
    "head-past-the-table": image([(0x4000, 64, 0, 0)], [300]),
    "address-past-memory": image([(0x10000 - 8, 64, 0, 0)], [0]),
    "address-wraps": image([(0xffff_ffff_ffff_fff0, 64, 0, 0)], [0]),
    "length-4-gib": image([(0x4000, 0xffff_ffff, 0, 0)], [0]),
    "zero-lengths": image([(0x4000, 0, NEXT, 1), (0x4000, 0, NEXT, 2), (0x4000, 0, 0, 0)], [0]),
    "header-only": image([(0x4000, 12, 0, 0)], [0]),
    "short-of-a-header": image([(0x4000, 11, 0, 0)], [0]),
    "write-only-transmit": image([(0x4000, 64, WRITE, 0)], [0]),
    "read-only-receive": image([(0x4000, 64, 0, 0)], [], shift=4),
    "indirect-table-not-negotiated": image([(0x5000, 32, INDIRECT, 0)], [0]),
    "indirect-table-pointing-at-itself": image([(0x0, 32, INDIRECT, 0)], [0]),
    "available-index-far-ahead": image([(0x4000, 64, 0, 0)], [0], avail_idx=0x8000),
    "available-index-one-past-the-ring": image([(0x4000, 64, WRITE, 0)] * 16, list(range(16)), avail_idx=17),
    "sixty-five-one-byte-receive-buffers": image(
        [(0x4000 + i, 1, WRITE, 0) for i in range(128)], [], shift=7, frame_len=1000),
    "receive-buffer-too-small-without-merging": image([(0x4000, 40, WRITE, 0)], [], mergeable=0, frame_len=200),
    "largest-frame-over-many-buffers": image(
        [(0x4000 + 0x100 * i, 0x100, WRITE, 0) for i in range(64)], [], shift=6, frame_len=0xffff),
    "frame-over-the-ring-image-itself": image([(0x0, 0x2000, WRITE, 0)], [], frame_len=0x1800),
    # Mode 3: receive buffers lent for a frame's payload (reserved, filled, completed).
    "largest-frame-in-lent-buffers": image(
        [(0x4000 + 0x100 * i, 0x100, WRITE, 0) for i in range(64)], [], shift=6, mergeable=3, frame_len=0xffff),
    "lent-buffers-one-byte-each": image(
        [(0x4000 + i, 1, WRITE, 0) for i in range(128)], [], shift=7, mergeable=3, frame_len=1000),
}
# The receive-side cases need their chains on the ring after the transmit pass has
# consumed nothing: give them available entries here.
for name in ["read-only-receive", "sixty-five-one-byte-receive-buffers",
             "receive-buffer-too-small-without-merging", "largest-frame-over-many-buffers",
             "frame-over-the-ring-image-itself", "largest-frame-in-lent-buffers", "lent-buffers-one-byte-each"]:
    data = bytearray(cases[name])
    count = {"sixty-five-one-byte-receive-buffers": 100, "largest-frame-over-many-buffers": 64,
             "largest-frame-in-lent-buffers": 64, "lent-buffers-one-byte-each": 100}.get(name, 1)
    base = 4 + 0x1000
    data[base + 2:base + 4] = struct.pack("<H", count)
    data.extend(b"\0" * max(0, base + 4 + 2 * count - len(data)))
    for i in range(count):
        data[base + 4 + 2 * i:base + 6 + 2 * i] = struct.pack("<H", i)
    cases[name] = bytes(data)
for name, data in cases.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
