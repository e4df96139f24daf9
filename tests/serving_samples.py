"""Request bodies for the serving tests: pictures in every mode, and the bad inputs clients send."""
import base64
import functools
import io
import json
import os
import re
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb_image(size=(24, 24), colour=(200, 30, 30), seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def jpeg(size=(24, 24)):
    return encode(rgb_image(size), "JPEG", quality=90)


def png(size=(24, 24)):
    return encode(rgb_image(size), "PNG")


def cmyk_jpeg():
    return encode(rgb_image().convert("CMYK"), "JPEG")


def rgba_png():
    image = rgb_image().convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def palette_png():
    return encode(rgb_image().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def png_16bit():
    pixels = np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 97
    image = Image.fromarray(pixels)  # 16-bit grey ("I;16")
    assert image.mode.startswith("I;16"), image.mode
    return encode(image, "PNG")


def grey_jpeg():
    return encode(rgb_image().convert("L"), "JPEG")


def exif_rotated_jpeg(width=40, height=20):
    """A landscape JPEG whose EXIF says 'rotate 90°': upright it is `height` wide and `width` tall."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return encode(rgb_image((width, height)), "JPEG", exif=exif.tobytes())


def truncated_jpeg():
    data = jpeg((64, 64))
    return data[: len(data) // 2]


def random_bytes(size=2000):
    return os.urandom(size)


def bomb_png(side=20_000):
    """A real decompression bomb: a side x side 1-bit PNG, a few tens of KB, 400 MP once decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    pixels = zlib.compress(row * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def pixel_bomb_webp(side=7_000):
    """A lossless WebP of a few KB that decodes to side x side pixels (49 MP by default, under the cap)."""
    return encode(Image.new("RGB", (side, side), (90, 120, 40)), "WEBP", lossless=True)


@functools.lru_cache(maxsize=None)
def scan_bomb_jpeg(side=7_000, repeats=3_000):
    """Issue 20's attack: a side x side progressive JPEG in which one small scan of the luma AC
    coefficients (with its Huffman table) is repeated `repeats` times. libjpeg-turbo decodes every scan
    over the whole picture: 3,000 repeats (about 400 KB) take about 16 s to decode."""
    data = encode(Image.new("RGB", (side, side), (90, 120, 40)), "JPEG", progressive=True, quality=75)
    # A solid picture: its entropy-coded data holds no 0xFF byte, so markers can be found by their bytes.
    tables = [m.start() for m in re.finditer(rb"\xff\xc4", data)]
    first_scan = data.index(b"\xff\xda")
    units = [(start, end) for start, end in zip(tables, tables[1:] + [data.rindex(b"\xff\xd9")])
             if start > first_scan and data[start:end].count(b"\xff\xda") == 1]

    def is_luma_ac(unit):
        scan = data.index(b"\xff\xda", *unit)
        components, first_component, spectral_start = data[scan + 4], data[scan + 5], data[scan + 4 + 2 * data[scan + 4] + 1]
        return components == 1 and first_component == 1 and spectral_start > 0

    start, end = min(filter(is_luma_ac, units), key=lambda unit: unit[1] - unit[0])
    return data[:start] + data[start:end] * repeats + b"\xff\xd9"


def thin_png(width=1, height=50_000):
    """A few hundred bytes that the evaluation transform would resize up to 256 x 12,800,000 pixels."""
    return encode(Image.new("L", (width, height), 128), "PNG")


def big_jpeg(size=(4_000, 3_000)):
    """A phone-camera-sized JPEG (12 MP) that the server decodes at 1/8 scale."""
    return encode(Image.new("RGB", size, (30, 90, 160)), "JPEG", quality=80)


def ico():
    """A real picture in a format Pillow reads but the allowlist refuses."""
    return encode(rgb_image((32, 32)), "ICO")


def nested_json(depth=100_000):
    return "[" * depth + "]" * depth


def batch_json(*pictures):
    return json.dumps({"instances": [{"b64": base64.b64encode(p).decode()} for p in pictures]})


# Pictures the server must answer with 200, by name.
GOOD_PICTURES = {
    "rgb-jpeg": ("image/jpeg", jpeg), "rgb-png": ("image/png", png), "x-image": ("application/x-image", png),
    "cmyk-jpeg": ("image/jpeg", cmyk_jpeg), "rgba-png": ("image/png", rgba_png),
    "palette-png": ("image/png", palette_png), "16bit-png": ("image/png", png_16bit),
    "grey-jpeg": ("image/jpeg", grey_jpeg), "exif-rotated-jpeg": ("image/jpeg", exif_rotated_jpeg),
}
