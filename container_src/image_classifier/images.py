"""Decoding pictures into RGB, the same way for training and serving.

Pictures come in every mode (CMYK JPEGs, palette or RGBA PNGs, 16-bit and grey scans) and often with an
EXIF orientation; the network wants upright 8-bit RGB. Only the formats in PICTURE_FORMATS are ever
opened (Pillow would otherwise try every plugin it has, EPS and PDF included), and the size in the header
is checked before any pixel is decoded: a 1 KB lossless WebP can declare 49 megapixels. A JPEG's scans are
counted from its bytes first too: a progressive decoder reads every scan over the whole picture, even when
decoding it small, and libjpeg-turbo sets no limit on their number (one 75-byte scan repeated 3,000 times
in a 7000x7000 picture, a 417 KB body, took 16 s to decode).

For serving, `min_side` makes a big picture cheap: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
(`Image.draft`, DCT scaling) and other formats are box-reduced right after decoding, in both cases only
as far as the short side stays at least `min_side` (what the evaluation transform resizes to next).
"""
import io
import math
import warnings
from pathlib import Path
from dataclasses import dataclass

from PIL import Image, ImageOps

# Formats decoded from datasets and requests; anything else (EPS, PDF, ICO...) is refused unread.
PICTURE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# A dog photo is a few megapixels; 50 MP is generous and still far below a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000
# Modes Pillow's `reduce` handles; others (palette, 1-bit, 16-bit) are converted at full size first,
# to a mode that keeps what to_rgb needs (16-bit values, transparency).
REDUCIBLE_MODES = ("L", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")
MODE_BEFORE_REDUCE = {"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
# Scans a JPEG may hold. Real encoders write 1 (baseline), libjpeg's standard progression 6 (grey), 10
# (YCbCr) or 18 (CMYK), mozjpeg and jpegli a few more than 10; 32 leaves room. Each scan costs a pass over
# the whole picture (about 0.1 ms per megapixel here), so 32 scans over the pixel budget stay under a second.
MAX_JPEG_SCANS = 32
# JPEG markers: those without a length field (TEM, RST0-7, SOI; EOI ends the image), start of scan.
_PARAMETERLESS_MARKERS = {0x01, *range(0xD0, 0xD9)}
_EOI, _SOS = 0xD9, 0xDA
# What a broken picture can raise while decoding (PIL raises OSError subclasses, SyntaxError for some).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageTooLargeError(ValueError):
    """The picture has more pixels (or a JPEG more scans) than allowed."""


@dataclass(frozen=True)
class PictureHeader:
    format: str
    size: tuple  # (width, height) as declared
    decoded_size: tuple  # (width, height) the decoder will produce (smaller for a drafted JPEG)

    @property
    def decoded_pixels(self):
        return self.decoded_size[0] * self.decoded_size[1]


def eval_resize(image_size):
    """The short side the evaluation transform resizes to before its centre crop (torchvision's 256/224)."""
    from .constants import RESIZE_RATIO

    return round(image_size / RESIZE_RATIO)


def charged_pixels(size, min_side):
    """What decoding and resizing a picture of `size` (as declared) costs, in pixels, when its short side
    is resized to `min_side`: the declared pixels (a drafted JPEG is still read whole: every scan covers
    every pixel), or the pixels it is resized up to when smaller (a 1x50000 picture becomes 256x12.8M)."""
    width, height = size
    scale = max(1.0, min_side / max(1, min(width, height)))
    return max(width * height, math.ceil(width * scale) * math.ceil(height * scale))


def to_rgb(image):
    """Upright 8-bit RGB from any Pillow image mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grey: scale to 8 bits by the actual range, not by clipping.
        image = image.convert("F")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent areas become white, not black: most product-style photos are shot on white.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _open(source):
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    return Image.open(source, formats=PICTURE_FORMATS)


def _check_size(image, max_pixels):
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"picture is {width}x{height} pixels, more than {max_pixels:,}")


def count_jpeg_scans(data, stop_after=MAX_JPEG_SCANS):
    """The number of scans (SOS segments) in a JPEG's first image, read the way libjpeg reads markers:
    a segment with a length is skipped whole, so bytes inside it never count; anything else up to the
    next marker (a scan's entropy-coded data, or garbage, which libjpeg skips with a warning) is searched
    for 0xFF followed by neither 0x00 (a stuffed byte) nor another 0xFF (fill). Stops at EOI, at the end
    of the data, or once `stop_after` is passed (the answer is then stop_after + 1)."""
    view, end, scans, position = memoryview(data), len(data), 0, 2  # after SOI
    while scans <= stop_after:
        position = data.find(b"\xff", position)
        if position < 0:
            break
        while position < end and view[position] == 0xFF:
            position += 1
        if position >= end:
            break
        marker = view[position]
        position += 1
        if marker == 0x00 or marker in _PARAMETERLESS_MARKERS:
            continue  # a stuffed byte, a restart marker or TEM: nothing to skip
        if marker == _EOI or position + 2 > end:
            break
        # The length counts its own two bytes; libjpeg skips nothing more for a shorter one.
        position += max(2, (view[position] << 8) | view[position + 1])
        scans += marker == _SOS
    return scans


def _jpeg_bytes(source, image):
    """The bytes of an opened JPEG (read again from its path; bytes as given)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, memoryview):
        return source.tobytes()
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    position = image.fp.tell()
    image.fp.seek(0)
    try:
        return image.fp.read()
    finally:
        image.fp.seek(position)


def _check_scans(source, image):
    if image.format not in ("JPEG", "MPO"):
        return
    scans = count_jpeg_scans(_jpeg_bytes(source, image))
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLargeError(f"the JPEG holds more than {MAX_JPEG_SCANS} scans (each one a pass over all "
                                 f"{image.size[0]}x{image.size[1]} pixels)")


def _draft(image, min_side):
    """Ask a JPEG decoder for a reduced scale that keeps the short side >= min_side (header only)."""
    if min_side and image.format == "JPEG":
        image.draft(image.mode, (min_side, min_side))


def _reduce(image, min_side):
    """Box-reduce a decoded picture by a whole factor, keeping its short side >= min_side."""
    factor = min(image.size) // min_side if min_side else 1
    if factor < 2:
        return image
    if image.mode not in REDUCIBLE_MODES:
        image = image.convert(MODE_BEFORE_REDUCE.get(image.mode)
                              or ("RGBA" if "transparency" in image.info else "RGB"))
    return image.reduce(factor)


def _guarded(function):
    """Pillow's decompression-bomb warning (and error) become ImageTooLargeError."""
    def guarded(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                return function(*args, **kwargs)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
                raise ImageTooLargeError(str(error)) from None
    guarded.__doc__ = function.__doc__
    return guarded


@_guarded
def read_header(source, max_pixels=DEFAULT_MAX_PIXELS, min_side=None):
    """Format and sizes from the header alone (nothing decoded); refuses other formats and big pictures."""
    with _open(source) as image:
        _check_size(image, max_pixels)
        _check_scans(source, image)
        size = image.size
        _draft(image, min_side)
        return PictureHeader(image.format, size, image.size)


@_guarded
def open_rgb(source, max_pixels=DEFAULT_MAX_PIXELS, min_side=None):
    """Open a path or bytes and decode it into upright RGB; raises ValueError subclasses (and OSError,
    SyntaxError from Pillow) on bad input. With `min_side`, a big picture is decoded or reduced to a
    smaller size whose short side is still at least `min_side`, and no full-size copy is kept."""
    with _open(source) as image:
        _check_size(image, max_pixels)
        _check_scans(source, image)
        _draft(image, min_side)
        image.load()
        # EXIF orientation survives `reduce` only through the source's info: read it before reducing.
        exif = image.getexif()
        small = _reduce(image, min_side)
    if small is not image and exif:
        small.info["exif"] = exif.tobytes()
    return to_rgb(small)
