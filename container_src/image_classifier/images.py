"""Decoding pictures into RGB, the same way for training and serving.

Pictures come in every mode (CMYK JPEGs, palette or RGBA PNGs, 16-bit and grey scans) and often with an
EXIF orientation; the network wants upright 8-bit RGB. Only the formats in PICTURE_FORMATS are ever
opened (Pillow would otherwise try every plugin it has, EPS and PDF included), and the size in the header
is checked before any pixel is decoded: a 1 KB lossless WebP can declare 49 megapixels. Before Pillow sees
a picture, what its container repeats is counted from its bytes (picture_containers.py): a JPEG's scans (a
progressive decoder reads every scan over the whole picture, and libjpeg-turbo sets no limit on their
number: one 75-byte scan repeated 3,000 times in a 7000x7000 picture, a 417 KB body, took 16 s to decode),
and the segments, chunks, blocks and IFD entries Pillow walks in Python (a 64x64 JPEG with a million
empty comments took it 2 s).

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

from .picture_containers import container_excess

# Formats decoded from datasets and requests; anything else (EPS, PDF, ICO...) is refused unread.
PICTURE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# A dog photo is a few megapixels; 50 MP is generous and still far below a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000
# Modes Pillow's `reduce` handles; others (palette, 1-bit, 16-bit) are converted at full size first,
# to a mode that keeps what to_rgb needs (16-bit values, transparency).
REDUCIBLE_MODES = ("L", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")
MODE_BEFORE_REDUCE = {"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
# The colour transparent areas become: most product-style photos are shot on white.
TRANSPARENT_BECOMES = (255, 255, 255)
# What a broken picture can raise while decoding (PIL raises OSError subclasses, SyntaxError for some).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageTooLargeError(ValueError):
    """The picture has more pixels than allowed, or its container more of what it repeats (a JPEG's scans
    or segments, a PNG's chunks...) than picture_containers.py allows."""


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
    return math.ceil(width * scale) * math.ceil(height * scale)  # the declared pixels when scale is 1


def to_rgb(image):
    """Upright 8-bit RGB from any Pillow image mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grey: scale to 8 bits by the actual range, not by clipping.
        image = image.convert("F")
        low, high = image.getextrema()
        if high > low:  # still "F" after: convert("RGB") below rounds it
            image = image.point(lambda v: (v - low) * (255.0 / (high - low)))
        else:
            image = Image.new("F", image.size)  # one value throughout: black
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # pragma: no mutate - convert(None) picks RGBA here too (Pillow)
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, TRANSPARENT_BECOMES)
        background.paste(image, mask=image.getchannel("A"))  # paste converts LA and PA to RGB itself
        return background
    return image.convert("RGB")


def _picture_bytes(source):
    """The whole picture as bytes: the container is counted from them before Pillow reads anything."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _open(source):
    data = _picture_bytes(source)
    excess = container_excess(data)
    if excess:
        raise ImageTooLargeError(excess)
    return Image.open(io.BytesIO(data), formats=PICTURE_FORMATS)


def _check_size(image, max_pixels):
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"picture is {width}x{height} pixels, more than {max_pixels:,}")


def _draft(image, min_side):
    """Ask a JPEG decoder for a reduced scale that keeps the short side >= min_side (header only)."""
    if min_side and image.format == "JPEG":
        image.draft(None, (min_side, min_side))  # the scale only: the mode stays (None, as Pillow's thumbnail)


def _reduce(image, min_side):
    """Box-reduce a decoded picture by a whole factor, keeping its short side >= min_side."""
    factor = min(image.size) // min_side if min_side else 1
    if factor < 2:
        return image
    if image.mode not in REDUCIBLE_MODES:
        image = image.convert(_mode_before_reduce(image))
    return image.reduce(factor)


def _mode_before_reduce(image):
    """A mode `reduce` handles that keeps what to_rgb needs: 16-bit values, 1-bit as grey, transparency."""
    if image.mode in MODE_BEFORE_REDUCE:
        return MODE_BEFORE_REDUCE[image.mode]
    if "transparency" in image.info:
        return "RGBA"
    return "RGB"


def _bombs_refused(read, *args):
    """read(*args), with Pillow's decompression-bomb warning (and error) raised as ImageTooLargeError. Called
    at each read (not a decorator applied at import), so that mutation testing reaches it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return read(*args)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ImageTooLargeError(str(error)) from None


def read_header(source, max_pixels=DEFAULT_MAX_PIXELS, min_side=None):
    """Format and sizes from the header alone (nothing decoded); refuses other formats and big pictures."""
    return _bombs_refused(_read_header, source, max_pixels, min_side)


def _read_header(source, max_pixels, min_side):
    with _open(source) as image:
        _check_size(image, max_pixels)
        size = image.size
        _draft(image, min_side)
        return PictureHeader(image.format, size, image.size)


def open_rgb(source, max_pixels=DEFAULT_MAX_PIXELS, min_side=None):
    """Open a path or bytes and decode it into upright RGB; raises ValueError subclasses (and OSError,
    SyntaxError from Pillow) on bad input. With `min_side`, a big picture is decoded or reduced to a
    smaller size whose short side is still at least `min_side`, and no full-size copy is kept."""
    return _bombs_refused(_open_rgb, source, max_pixels, min_side)


def _open_rgb(source, max_pixels, min_side):
    with _open(source) as image:
        _check_size(image, max_pixels)
        _draft(image, min_side)
        image.load()  # reduce and convert copy the info, EXIF orientation included
        small = _reduce(image, min_side)
    return to_rgb(small)
