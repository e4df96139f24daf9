"""What a picture's container repeats, counted from its bytes before Pillow opens it.

Pillow walks a picture's markers, segments, chunks and blocks in Python, a few microseconds each, whatever
the pixels: a valid 64x64 JPEG with a million empty comment segments, or a 64x64 PNG with 500,000 empty
private chunks, each under 6 MB, cost it 1-3 s per request. `container_excess` walks the same structure
in a tight loop (each step one slice or one `find`, no Pillow), stops as soon as a bound below is passed,
and says why; it costs a few milliseconds at most on a 6 MB body.

What each accepted format can repeat, and what is bounded here:
- JPEG: segments (APPn, COM, DQT, DHT, ...) and scans up to the first image's EOI; bytes outside any
  segment before the first scan (junk, 0xFF fill), which Pillow skips one at a time; the EXIF IFD.
- PNG: chunks up to IEND (up to the second frame of an APNG, where Pillow stops); the eXIf IFD.
- WebP (RIFF): top-level chunks (ANMF frames, unknown chunks); the EXIF IFD.
- GIF: extension blocks and their sub-blocks before the first image (Pillow reads no further for it).
- TIFF: the first IFD's entries and its strips or tiles (Pillow opens the first page only).
- BMP: nothing repeats (a header, a palette of at most 256 entries, then the pixels).
"""
import math
import re
import struct

# JPEG segments up to EOI. Real files hold a few dozen: EXIF APP1, XMP and extended XMP (64 KB per
# segment: a few MB of depth maps is a few dozen), an ICC profile over at most 255 APP2 segments (its
# sequence number is one byte), MPF APP2, Adobe APP14, DQT/DHT/SOF/SOS, and per progressive scan a DHT.
# 1,024 is four times the largest of those; Pillow's walk of 1,024 empty segments takes about 3 ms.
MAX_JPEG_SEGMENTS = 1024
# Scans a JPEG may hold. Real encoders write 1 (baseline), libjpeg's standard progression 6 (grey), 10
# (YCbCr) or 18 (CMYK), mozjpeg and jpegli a few more than 10; 32 leaves room. Each scan costs a pass over
# the whole picture (about 0.1 ms per megapixel here), so 32 scans over the pixel budget stay under a second.
MAX_JPEG_SCANS = 32
# Bytes outside any segment before the first scan (junk, or 0xFF fill before a marker). Encoders write
# none; a few broken writers pad some hundreds. Pillow skips them one Python step each (about 0.3 us).
MAX_JPEG_STRAY_BYTES = 16 * 1024
# PNG chunks: a flat allowance for the metadata (IHDR, PLTE, iCCP, eXIf, pHYs, a few dozen tEXt/iTXt/zTXt
# at most) and the IDATs of a small picture, plus one chunk per 4 KB of file for a big picture's IDATs,
# which encoders split at 8 KB (libpng) or more. A 6 MB body then holds at most about 2,500 chunks.
MAX_PNG_CHUNKS = 1024
PNG_BYTES_PER_EXTRA_CHUNK = 4096
# WebP top-level chunks: VP8X, ICCP, ANIM, EXIF, XMP, ALPH, VP8/VP8L, and one ANMF per animation frame (a
# long sticker or a converted GIF has a few thousand). libwebp walks them in C (about 60 ns each).
MAX_WEBP_CHUNKS = 16 * 1024
# GIF extension blocks and sub-blocks before the first image: a graphic control extension, NETSCAPE2.0,
# a comment, and XMP (written with one sub-block per ~90 bytes plus a 257-block trailer: a 300 KB packet
# stays under the bound). Pillow reads each in Python (about 0.3 us each).
MAX_GIF_BLOCKS_BEFORE_IMAGE = 4096
# Entries in one TIFF IFD (a TIFF's first page, or the EXIF of a JPEG, PNG or WebP). Cameras write 10-20
# in IFD0 and 40-70 in the EXIF IFD, a DNG about 100. A request reads, rewrites and rereads the IFD (open,
# EXIF orientation): about 23 us per entry here (1,000 cost a TIFF 23 ms; a classic IFD's 65,535 entries,
# 0.15 s per read; a BigTIFF's count has no limit).
MAX_IFD_ENTRIES = 256
# TIFF strips or tiles of the first page: libtiff aims at 8 KB strips (one row of a wide picture: a
# 4000x3000 photo in 3,000 strips), tiles are 256x256 or larger; Pillow makes one decoder call per strip or
# tile in Python (about 12 us each here). A flat 1,024 plus one per 4,096 pixels (a one-row strip of a
# 4,096-wide picture) keeps their cost proportional to the pixels: at most about 2,500 in a 6 MB body.
MAX_TIFF_BLOCKS = 1024
TIFF_PIXELS_PER_EXTRA_BLOCK = 4096

# JPEG markers: those without a length field (TEM, RST0-7, SOI; EOI ends the image), start of frame, scan.
_PARAMETERLESS_MARKERS = {0x01, *range(0xD0, 0xD9)}
_EOI, _SOS, _APP1 = 0xD9, 0xDA, 0xE1
_START_OF_FRAME = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
_NOT_FILL = re.compile(rb"[^\xff]")
_EXIF_PREFIX = b"Exif\x00\x00"
# TIFF tags that give the first page's size and its strips or tiles.
_WIDTH, _HEIGHT, _STRIP_OFFSETS, _TILE_OFFSETS = 256, 257, 273, 324
_NO_BLOCKS = {_STRIP_OFFSETS: 0, _TILE_OFFSETS: 0}  # a first IFD with neither tag: no strips or tiles
# A TIFF's first 4 bytes -> (struct's byte order, BigTIFF?): byte order, then version 42 (classic) or 43 (BigTIFF).
_TIFF_LAYOUTS = {b"II*\x00": ("<", False), b"MM\x00*": (">", False), b"II+\x00": ("<", True), b"MM\x00+": (">", True)}


def container_excess(data):
    """Why the picture's container is refused (a sentence naming the bound), or None when within bounds.
    Formats other than those named in the module's docstring are left to the format allowlist."""
    data = bytes(data)
    for magic, walk in _WALKS:
        if data.startswith(magic):
            return walk(data)
    return None


# ------------------------------------------------------------------------------------------- JPEG
def count_jpeg_scans(data, stop_after=MAX_JPEG_SCANS):
    """The number of scans (SOS segments) in a JPEG's first image (`walk_jpeg`); stop_after + 1 once
    `stop_after` is passed."""
    return walk_jpeg(data, max_scans=stop_after, max_segments=math.inf, max_stray=math.inf)["scans"]


def walk_jpeg(data, max_scans=MAX_JPEG_SCANS, max_segments=MAX_JPEG_SEGMENTS, max_stray=MAX_JPEG_STRAY_BYTES):
    """Counts of a JPEG's first image, read the way libjpeg reads markers: a segment with a length is skipped
    whole, so bytes inside it never count; anything else up to the next marker (a scan's entropy-coded data,
    or garbage, which libjpeg skips with a warning) is searched for 0xFF followed by neither 0x00 (a stuffed
    byte) nor another 0xFF (fill). Stops at EOI, at the end of the data, or once a count passes its bound
    (it is then bound + 1). Returns {"segments", "scans", "stray", "size", "exif_entries"}."""
    view, end = memoryview(data), len(data)
    counts = {"segments": 0, "scans": 0, "stray": 0, "size": None, "exif_entries": 0}
    position = 2  # after SOI
    while counts["scans"] <= max_scans and counts["segments"] <= max_segments and counts["stray"] <= max_stray:
        found = data.find(b"\xff", position)
        if found == -1:
            break
        # Before the first scan, look no further than the stray bytes still allowed.
        limit = end if counts["scans"] else min(end, found + max_stray - counts["stray"] + 2)
        marker_at = _NOT_FILL.search(data, found, limit)
        if marker_at is None:
            counts["stray"] += (limit - found) * (limit < end)
            break
        if not counts["scans"]:  # before the first scan Pillow steps over junk and fill one byte at a time
            counts["stray"] += marker_at.start() - 1 - position
        position = marker_at.start()
        marker = view[position]
        position += 1
        if marker == 0x00 or marker in _PARAMETERLESS_MARKERS:
            counts["stray"] += 2 * (marker == 0x00 and not counts["scans"])
            continue  # a stuffed byte, a restart marker or TEM: nothing to skip
        if marker == _EOI or position + 2 > end:
            break
        # The length counts its own two bytes; libjpeg skips nothing more for a shorter one.
        length = max(2, (view[position] << 8) | view[position + 1])
        _note_jpeg_segment(counts, marker, data[position + 2:position + length])
        position += length
    return counts


def _note_jpeg_segment(counts, marker, payload):
    counts["segments"] += 1
    counts["scans"] += marker == _SOS
    if marker in _START_OF_FRAME and len(payload) >= 5 and counts["size"] is None:
        height, width = struct.unpack_from(">HH", payload, 1)
        counts["size"] = (width, height)
    if marker == _APP1 and payload.startswith(_EXIF_PREFIX):
        counts["exif_entries"] = max(counts["exif_entries"], ifd_entries(payload))


def _jpeg_excess(data):
    counts = walk_jpeg(data)
    if counts["scans"] > MAX_JPEG_SCANS:
        width, height = counts["size"] or ("?", "?")
        return f"the JPEG holds more than {MAX_JPEG_SCANS} scans (each one a pass over all {width}x{height} pixels)"
    if counts["segments"] > MAX_JPEG_SEGMENTS:
        return f"the JPEG holds more than {MAX_JPEG_SEGMENTS:,} marker segments"
    if counts["stray"] > MAX_JPEG_STRAY_BYTES:
        return f"the JPEG holds more than {MAX_JPEG_STRAY_BYTES:,} stray bytes between its header's segments"
    return _ifd_excess(counts["exif_entries"], "the JPEG's EXIF")


# -------------------------------------------------------------------------------------------- PNG
def _png_excess(data):
    bound = MAX_PNG_CHUNKS + len(data) // PNG_BYTES_PER_EXTRA_CHUNK
    chunks, position, animated, image_data_seen = 0, 8, False, False
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > bound:
            return f"the PNG holds more than {bound:,} chunks (a flat {MAX_PNG_CHUNKS:,} and one per " \
                   f"{PNG_BYTES_PER_EXTRA_CHUNK:,} bytes)"
        if kind == b"IEND" or (kind == b"fcTL" and animated and image_data_seen):
            return None  # Pillow reads the first frame only
        animated |= kind == b"acTL"
        image_data_seen |= kind == b"IDAT"
        if kind == b"eXIf":
            excess = _ifd_excess(ifd_entries(data[position + 8:position + 8 + length]), "the PNG's eXIf")
            if excess:
                return excess
        position += 12 + length
    return None


# ------------------------------------------------------------------------------------------- WebP
def _webp_excess(data):
    if data[8:12] != b"WEBP":
        return None  # another RIFF format: the allowlist refuses it
    chunks, position = 0, 12  # after RIFF, its size and WEBP
    while position + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, position)
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            return f"the WebP holds more than {MAX_WEBP_CHUNKS:,} chunks"
        if kind == b"EXIF":
            excess = _ifd_excess(ifd_entries(data[position + 8:position + 8 + length]), "the WebP's EXIF")
            if excess:
                return excess
        position += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


# -------------------------------------------------------------------------------------------- GIF
def _gif_excess(data):
    if len(data) < 13:  # pragma: no mutate - "<= 13" or "< 14" alike: a 13-byte GIF holds no block either
        return None  # not even the screen descriptor: nothing to walk
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    blocks = 0
    while position < len(data) and data[position] == 0x21:  # an extension, up to the first image (0x2C)
        position += 2
        while position < len(data):
            blocks += 1
            if blocks > MAX_GIF_BLOCKS_BEFORE_IMAGE:
                return f"the GIF holds more than {MAX_GIF_BLOCKS_BEFORE_IMAGE:,} extension blocks before its image"
            size = data[position]
            position += 1 + size
            if not size:
                break  # the terminator
    return None


# ------------------------------------------------------------------------------------------- TIFF
def _first_ifd(tiff):
    """(endian, BigTIFF?, offset of the first IFD, its entry count), or None when unreadable."""
    layout = _TIFF_LAYOUTS.get(tiff[:4])
    if layout is None:
        return None
    endian, big = layout
    offset_format, count_format = ("Q", "Q") if big else ("I", "H")
    header = 16 if big else 8
    if len(tiff) < header:
        return None
    offset = struct.unpack_from(endian + offset_format, tiff, 8 if big else 4)[0]
    if offset + struct.calcsize(count_format) > len(tiff):
        return None
    return endian, big, offset, struct.unpack_from(endian + count_format, tiff, offset)[0]


def ifd_entries(exif):
    """The entry count of the first IFD of an EXIF block (with or without its `Exif\\0\\0` prefix) or a TIFF;
    0 when it is not readable (Pillow then reads nothing either)."""
    tiff = exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif
    first = _first_ifd(tiff)
    return first[3] if first else 0


def _ifd_excess(entries, what):
    if entries > MAX_IFD_ENTRIES:
        return f"{what} IFD holds {entries:,} entries, more than {MAX_IFD_ENTRIES:,}"
    return None


def _tiff_excess(data):
    first = _first_ifd(data)
    if first is None:
        return None
    endian, big, offset, entries = first
    excess = _ifd_excess(entries, "the TIFF's first")
    if excess:
        return excess
    entry_format, start = (endian + "HHQ", offset + 8) if big else (endian + "HHI", offset + 2)
    entry_size = 20 if big else 12
    fields = dict(_NO_BLOCKS)
    for index in range(entries):
        at = start + index * entry_size
        if at + entry_size > len(data):
            break
        tag, kind, count = struct.unpack_from(entry_format, data, at)
        if tag in (_WIDTH, _HEIGHT):
            value_format = endian + ("H" if kind == 3 else "I")
            fields[tag] = struct.unpack_from(value_format, data, at + (12 if big else 8))[0] \
                if count == 1 and kind in (3, 4) else 0
        elif tag in (_STRIP_OFFSETS, _TILE_OFFSETS):
            fields[tag] = count
    pixels = fields.get(_WIDTH, 0) * fields.get(_HEIGHT, 0)
    blocks = max(fields[_STRIP_OFFSETS], fields[_TILE_OFFSETS])
    bound = MAX_TIFF_BLOCKS + pixels // TIFF_PIXELS_PER_EXTRA_BLOCK
    if blocks > bound:
        return f"the TIFF's first page holds {blocks:,} strips or tiles, more than {bound:,} " \
               f"(a flat {MAX_TIFF_BLOCKS:,} and one per {TIFF_PIXELS_PER_EXTRA_BLOCK:,} pixels)"
    return None


# Magic bytes -> walk. The walks take the whole data; each returns a reason or None.
_WALKS = (
    (b"\xff\xd8", _jpeg_excess), (b"\x89PNG\r\n\x1a\n", _png_excess), (b"RIFF", _webp_excess),
    (b"GIF8", _gif_excess), *((magic, _tiff_excess) for magic in _TIFF_LAYOUTS),
)
