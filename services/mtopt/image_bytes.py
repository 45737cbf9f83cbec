"""What image bytes hold, read without decoding the pixels.

`image_header` reads a PNG's or JPEG's format, size and bit depth, so a tiny file cannot make a
decoder allocate a huge image. `png_shape` checks that PNG bytes are a complete, intact image.
episode_store validates every image of every upload; it needs to know that each one decodes to
the declared shape, not the pixels. `png_shape` walks the chunks (CRC of each), reads IHDR,
inflates the IDAT stream and checks its length and every row's filter byte: the same failures
libpng reports while decoding, at about a quarter of ``cv2.imdecode``'s cost for a 64x64 image.

    fmt, height, width, depth = image_header(data)    # ValueError if neither PNG nor JPEG
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


def image_header(data: bytes) -> tuple[str, int, int, int]:
    """(format, height, width, bits per sample) read from a PNG or JPEG header, without decoding.

    Raises ValueError when the bytes are neither.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ValueError("PNG image has no IHDR header")
        width, height, depth = struct.unpack(">IIB", data[16:25])
        return "png", height, width, depth
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                raise ValueError("JPEG image is corrupt (marker expected)")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > n:
                    break
                depth, height, width = struct.unpack(">BHH", data[i + 4 : i + 9])
                return "jpeg", height, width, depth
            if marker == 0xDA or length < 2:
                break
            i += 2 + length
        raise ValueError("JPEG image has no frame header (SOF)")
    raise ValueError("image data is neither PNG nor JPEG")
