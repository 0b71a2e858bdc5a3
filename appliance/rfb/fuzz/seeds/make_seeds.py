#!/usr/bin/env python3
"""Writes seed inputs for the server_stream fuzz target into
seeds/server_stream/: one valid FramebufferUpdate or message per file,
after selector byte 4 (RFB 3.8, security None, 64x48 framebuffer).
Run: python3 seeds/make_seeds.py && cp seeds/server_stream/* corpus/server_stream/"""
import os, struct, zlib

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_stream")
os.makedirs(out, exist_ok=True)
z = zlib.compressobj(6)

def rect(x, y, w, h, enc):
    return struct.pack(">HHHHi", x, y, w, h, enc)

def upd(n):
    return struct.pack(">BBH", 0, 0, n)

def px(c):
    return struct.pack("<I", c)

def cpx(c):
    return struct.pack("<I", c)[:3]

def zrle(x, y, w, h, tiles):
    data = z.compress(tiles) + z.flush(zlib.Z_SYNC_FLUSH)
    return rect(x, y, w, h, 16) + struct.pack(">I", len(data)) + data

seeds = {
    "raw": upd(1) + rect(0, 0, 4, 2, 0) + b"".join(px(0xff0000 + i) for i in range(8)),
    "copy": upd(2) + rect(0, 0, 2, 1, 0) + px(1) + px(2) + rect(10, 10, 2, 1, 1) + struct.pack(">HH", 0, 0),
    "hextile": upd(1) + rect(0, 0, 20, 17, 5)
    + bytes([2 | 4 | 8]) + px(0xff0000) + px(0x00ff00) + bytes([1, 0x12, 0x21])
    + bytes([0]) + bytes([1]) + px(3) * 16 + bytes([2 | 8 | 16]) + px(5) + bytes([1]) + px(6) + bytes([0, 0]),
    "zrle": upd(2) + zrle(0, 0, 64, 48, bytes([1]) + cpx(0x123456))
    + zrle(0, 0, 8, 2, bytes([130]) + cpx(1) + cpx(2) + bytes([0x81, 3, 0, 1, 0x80, 5]))
    + upd(1) + zrle(0, 0, 4, 2, bytes([2]) + cpx(1) + cpx(2) + bytes([0b10100000, 0b01010000])),
    "zrle_raw_rle": upd(2) + zrle(1, 1, 3, 1, bytes([0]) + cpx(1) + cpx(2) + cpx(3))
    + zrle(0, 0, 16, 16, bytes([128]) + cpx(9) + bytes([254]) + cpx(8) + bytes([0])),
    "cursor": upd(1) + rect(1, 1, 3, 2, -239) + b"".join(px(i) for i in range(6)) + bytes([0xa0, 0x40]),
    "desktop": upd(1) + rect(0, 0, 70, 50, -223)
    + upd(1) + rect(0, 0, 64, 48, -308) + bytes([1, 0, 0, 0]) + struct.pack(">IHHHHI", 7, 0, 0, 64, 48, 0)
    + upd(1) + rect(1, 0, 65, 48, -308) + bytes([1, 0, 0, 0]) + struct.pack(">IHHHHI", 7, 0, 0, 65, 48, 0),
    "lastrect_bell": upd(0xffff) + rect(0, 0, 1, 1, 0) + px(4) + rect(0, 0, 0, 0, -224) + upd(0) + bytes([2])
    + bytes([1, 0, 0, 0, 0, 1]) + bytes(6),
    "cut_text": bytes([3, 0, 0, 0]) + struct.pack(">I", 5) + b"caf\xe9!",
    "ext_clipboard": b"".join(
        bytes([3, 0, 0, 0]) + struct.pack(">i", -len(p)) + p
        for p in [
            struct.pack(">II", (1 << 24) | (31 << 25) | 1, 0),
            struct.pack(">I", (1 << 27) | 1),
            struct.pack(">I", (1 << 25) | 1),
            struct.pack(">I", 1 << 26),
            struct.pack(">I", (1 << 28) | 1) + zlib.compress(struct.pack(">I", 6) + "Grü\r\n\0".encode()[:6]),
        ]
    ),
}
for name, body in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([4]) + body)
