#!/usr/bin/env python3
"""Hostile inputs for tests/reliability_*.rs and fuzz/regressions/: files that are valid up to the trick they
play on a reader. Python standard library only (zlib, struct, base64, json); no third-party package. Output is
deterministic: rerunning rewrites the same bytes.

  fixtures/hostile/iccp-bomb.png     an 8x8 RGB PNG whose iCCP colour-profile chunk inflates to 256 MiB
  fixtures/hostile/rgb16-3000x2000.png  a 16-bit RGB PNG of 6 Mpx (36 MB decoded, 6 bytes a pixel)
  fuzz/regressions/http_body/png-iccp-bomb.bin  a /v1/classify body carrying a 64 MiB iCCP bomb
  fuzz/regressions/safetensors_header/{duplicate,overlapping}-entries.safetensors
"""
import base64
import json
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, bit_depth: int, rows: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)  # colour type 2: RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def iccp(inflated: int) -> bytes:
    """An iCCP chunk: profile name, NUL, compression method 0, zlib stream of `inflated` zero bytes."""
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = [z.compress(block) for _ in range(inflated >> 20)]
    out.append(z.flush())
    return chunk(b"iCCP", b"bomb\x00\x00" + b"".join(out))


def small_rows(width: int, height: int) -> bytes:
    return b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))


def write(path: str, data: bytes) -> None:
    full = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
    print(f"{path}: {len(data)} bytes")


def safetensors(header: str, data: bytes) -> bytes:
    h = header.encode()
    return struct.pack("<Q", len(h)) + h + data


def main() -> None:
    write("fixtures/hostile/iccp-bomb.png", png(8, 8, 8, small_rows(8, 8), iccp(256 << 20)))
    w, h = 3000, 2000
    row = b"\x00" + bytes(w * 6)
    write("fixtures/hostile/rgb16-3000x2000.png", png(w, h, 16, row * h))
    body = json.dumps({"image": base64.b64encode(png(8, 8, 8, small_rows(8, 8), iccp(64 << 20))).decode()})
    write("fuzz/regressions/http_body/png-iccp-bomb.bin", b"\x00" + body.encode())
    # Two entries named "a" (a JSON map keeps only the last) and two entries sharing bytes 0..16.
    duplicate = ('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
                 '"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}')
    write("fuzz/regressions/safetensors_header/duplicate-entries.safetensors", safetensors(duplicate, bytes(32)))
    overlapping = ('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
                   '"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}')
    write("fuzz/regressions/safetensors_header/overlapping-entries.safetensors", safetensors(overlapping, bytes(16)))


if __name__ == "__main__":
    main()
