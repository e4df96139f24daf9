"""Decoding pictures into RGB, the same way for training and serving.

Pictures come in every mode (CMYK JPEGs, palette or RGBA PNGs, 16-bit and grey scans) and often with an
EXIF orientation; the network wants upright 8-bit RGB. Pillow's decompression-bomb guard is raised to an
error so a huge picture fails fast instead of filling memory.
"""
import io
import warnings

from PIL import Image, ImageOps

# A dog photo is a few megapixels; 50 MP is generous and still far below a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLargeError(ValueError):
    """The picture has more pixels than allowed."""


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


def open_rgb(source, max_pixels=DEFAULT_MAX_PIXELS):
    """Open a path or bytes and decode it fully into RGB; raises ValueError subclasses on bad input."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(f"picture is {width}x{height} pixels, more than {max_pixels:,}")
                image.load()
                return to_rgb(image)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ImageTooLargeError(str(error)) from None
