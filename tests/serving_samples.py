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


# ------------------------------------------------------------- containers (issue 31, item 10)
BODY_CAP = 6 * 1024 * 1024  # contract.DEFAULT_PAYLOAD_CAP_MB: the floods below stay just under it


def png_chunk(kind, data=b""):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ifd(entries, prefix=b"Exif\x00\x00"):
    """An EXIF block whose first IFD holds `entries` SHORT entries (real cameras write 10-70)."""
    body = b"".join(struct.pack("<HHIHH", 1 + n, 3, 1, 1, 0) for n in range(entries))
    return prefix + b"II*\x00" + struct.pack("<IH", 8, entries) + body + b"\x00\x00\x00\x00"


def fill(unit, room):
    return unit * max(0, (BODY_CAP - 1024 - room) // len(unit))


def jpeg_segment_flood():
    """The issue's attack: a valid 64x64 JPEG carrying about 1.5 million empty comment segments."""
    small = jpeg((64, 64))
    return small[:2] + fill(b"\xff\xfe\x00\x02", len(small)) + small[2:]


def jpeg_stray_bytes():
    """A 64x64 JPEG with megabytes of junk before its first scan (Pillow skips it a byte at a time)."""
    small = jpeg((64, 64))
    scan = small.index(b"\xff\xda")
    return small[:scan] + fill(b"\x00", len(small)) + small[scan:]


def jpeg_exif_flood():
    """A JPEG whose EXIF APP1 segment holds 5,000 IFD entries (its most: the segment is 64 KB)."""
    return encode(rgb_image((64, 64)), "JPEG", exif=ifd(5_000))


def png_chunk_flood(kind=b"prVt", before_image=True):
    """A valid 64x64 PNG carrying about 500,000 empty chunks (private ones, or empty IDATs)."""
    small = png((64, 64))
    at = small.index(b"IDAT" if before_image else b"IEND") - 4
    return small[:at] + fill(png_chunk(kind), len(small)) + small[at:]


def png_exif_flood():
    small = png((64, 64))
    at = small.index(b"IDAT") - 4
    return small[:at] + png_chunk(b"eXIf", ifd(60_000, prefix=b"")) + small[at:]


def webp_chunk_flood():
    """A 64x64 WebP followed by 750,000 empty unknown chunks (libwebp's demuxer walks every one)."""
    small = encode(rgb_image((64, 64)), "WEBP")
    body = small[12:] + fill(b"ABCD\x00\x00\x00\x00", len(small))
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def gif_extension_flood():
    """A 64x64 GIF whose first image comes after two million empty comment extensions."""
    small = encode(rgb_image((64, 64)).convert("P"), "GIF")
    flags = small[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return small[:at] + fill(b"\x21\xfe\x00", len(small)) + small[at:]


def tiff_ifd_flood():
    """A TIFF whose first IFD holds 5,000 entries beyond its own (Pillow reads each in Python)."""
    from PIL import TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    for tag in range(40_000, 45_000):
        tags[tag] = 1
        tags.tagtype[tag] = 3
    return encode(rgb_image((64, 64)), "TIFF", tiffinfo=tags)


def tiff_strip_flood():
    """A 16x40,000 TIFF with a strip per row: 40,000 decoder calls for 640,000 pixels."""
    return encode(Image.new("L", (16, 40_000), 128), "TIFF", tiffinfo={278: 1})


# Hostile containers: name -> (maker, what the refusal names).
HOSTILE_CONTAINERS = {
    "jpeg-segment-flood": (jpeg_segment_flood, "1,024 marker segments"),
    "jpeg-stray-bytes": (jpeg_stray_bytes, "stray bytes"), "jpeg-exif-flood": (jpeg_exif_flood, "EXIF IFD"),
    "png-private-chunk-flood": (png_chunk_flood, "chunks"),
    "png-empty-idat-flood": (lambda: png_chunk_flood(b"IDAT", before_image=False), "chunks"),
    "png-exif-flood": (png_exif_flood, "eXIf IFD"), "webp-chunk-flood": (webp_chunk_flood, "chunks"),
    "gif-extension-flood": (gif_extension_flood, "extension blocks"),
    "tiff-ifd-flood": (tiff_ifd_flood, "first IFD"), "tiff-strip-flood": (tiff_strip_flood, "strips or tiles"),
}


def camera_exif(thumbnail_side=160):
    """EXIF as a phone writes it: make, model, orientation, dates, exposure, GPS, and a JPEG thumbnail
    (kept in the MakerNote here: Pillow writes no IFD1), about 10-20 KB."""
    exif = Image.Exif()
    exif.update({0x010F: "Phone Maker", 0x0110: "Phone 12 Pro", 0x0112: 1, 0x0131: "Camera 1.0",
                 0x0132: "2026:12:06 10:00:00"})
    details = exif.get_ifd(0x8769)
    details.update({0x829A: 0.01, 0x829D: 1.8, 0x8827: 100, 0x9003: "2026:12:06 10:00:00", 0x920A: 4.2,
                    0x927C: jpeg((thumbnail_side, thumbnail_side * 3 // 4))})
    exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)})
    return exif.tobytes()


def icc_profile(size=600_000):
    """An ICC profile's size: a 600 KB profile (a camera's or a printer's) splits into 10 APP2 segments."""
    header = struct.pack(">I", size) + b"lcms" + b"\x04\x30\x00\x00" + b"mntrRGB XYZ " + bytes(12) + b"acsp"
    return header + bytes(size - len(header))


XMP = ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
       + "<rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/'/>" * 300
       + "</rdf:RDF></x:xmpmeta>").encode()


def phone_jpeg():
    """A progressive 1024x768 JPEG with a phone's EXIF and thumbnail, a 600 KB ICC profile, XMP, a comment."""
    return encode(rgb_image((1024, 768)), "JPEG", quality=90, progressive=True, exif=camera_exif(),
                  icc_profile=icc_profile(), xmp=XMP, comment=b"shot on a phone")


def phone_png():
    """A 640x480 PNG with an ICC profile, eXIf, and 40 text chunks (tEXt, zTXt, iTXt)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for n in range(40):
        [info.add_text, lambda k, v: info.add_text(k, v, zip=True), info.add_itxt][n % 3](f"Key{n}", "value " * 50)
    return encode(rgb_image((640, 480)), "PNG", pnginfo=info, icc_profile=icc_profile(60_000), exif=camera_exif())


def tagged_png(chunks=100):
    """A small PNG with 100 text chunks, as tagging tools and image generators write them (each setting or
    keyword its own tEXt): the PNG bound's flat part, not its per-byte part, lets it through."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for n in range(chunks):
        info.add_text(f"setting{n}", str(n))
    return encode(rgb_image((64, 64)), "PNG", pnginfo=info)


def animation(fmt, frames=8, **options):
    pictures = [rgb_image((96, 64), colour=(40 * n, 90, 200 - 20 * n), seed=n) for n in range(frames)]
    return encode(pictures[0], fmt, save_all=True, append_images=pictures[1:], duration=80, loop=0, **options)


def phone_webp():
    """An animated WebP (8 frames) with an ICC profile, EXIF and XMP."""
    return animation("WEBP", icc_profile=icc_profile(60_000), exif=camera_exif(), xmp=XMP)


def animated_gif():
    """An 8-frame looping GIF (NETSCAPE2.0 application extension) with a comment."""
    return animation("GIF", comment=b"made by a phone's sticker maker")


def scanner_tiff():
    """A 1200x900 TIFF as libtiff writes it: about 8 KB strips, with a description and a resolution."""
    return encode(rgb_image((1200, 900)), "TIFF", tiffinfo={278: 3, 270: "scanned", 282: 300.0, 283: 300.0})


# Pictures as cameras, phones and tools write them: each must still decode and serve.
CAMERA_PICTURES = {"phone-jpeg": phone_jpeg, "phone-png": phone_png, "tagged-png": tagged_png,
                   "animated-png": lambda: animation("PNG"), "phone-webp": phone_webp,
                   "animated-gif": animated_gif, "scanner-tiff": scanner_tiff}


# Pictures the server must answer with 200, by name.
GOOD_PICTURES = {
    "rgb-jpeg": ("image/jpeg", jpeg), "rgb-png": ("image/png", png), "x-image": ("application/x-image", png),
    "cmyk-jpeg": ("image/jpeg", cmyk_jpeg), "rgba-png": ("image/png", rgba_png),
    "palette-png": ("image/png", palette_png), "16bit-png": ("image/png", png_16bit),
    "grey-jpeg": ("image/jpeg", grey_jpeg), "exif-rotated-jpeg": ("image/jpeg", exif_rotated_jpeg),
}
