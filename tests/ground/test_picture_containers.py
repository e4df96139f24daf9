"""What a picture's container repeats, counted from its bytes (picture_containers.py): exact counts of
hand-built containers, each bound exact (at the bound passes, one more is refused, with its reason), and
truncated or lying containers walked without error. The walks see bytes only, so most pictures here are
built by hand, byte by byte; test_images.py has the real encoders' pictures and the floods."""
import io
import struct

import pytest
from PIL import Image

import serving_samples as samples
from image_classifier import picture_containers as pc

# ------------------------------------------------------------------------------------------- JPEG
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
JFIF = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
SOS = b"\xff\xda" + struct.pack(">H", 12) + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
# A scan's entropy-coded data: a stuffed byte (FF 00), RST0, fill before RST1, TEM: none is a segment.
ENTROPY = b"\x12\xff\x00\x34\xff\xd0\x56\xff\xff\xd1\x78\xff\x01\x9a"


def segment(marker, payload=b""):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def sof(width, height, marker=0xC0):
    return segment(marker, b"\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01")


def counts(segments, scans, stray, size, exif_entries):
    return {"segments": segments, "scans": scans, "stray": stray, "size": size, "exif_entries": exif_entries}


@pytest.mark.parametrize("data, expected", [
    # APP0 before the frame (its payload is no size), EXIF in APP1 (7 entries), comments that hold SOS bytes
    # and an EXIF-like block (only APP1 is EXIF), a frame wider than a signed short, two scans; what follows
    # EOI is not read.
    (SOI + segment(0xE0, JFIF) + segment(0xE1, samples.ifd(7)) + segment(0xFE, b"\xff\xda" * 3)
     + segment(0xFE, samples.ifd(300)) + sof(65_000, 48) + segment(0xC4, bytes(20)) + SOS + ENTROPY + SOS + ENTROPY
     + EOI + SOS * 3, counts(8, 2, 0, (65_000, 48), 7)),
    # Stray bytes before the first scan: 3 of junk, 2 of extra fill, a stuffed byte's 2; none after it.
    (SOI + b"abc" + segment(0xE0, JFIF) + b"\xff\xff" + segment(0xDB, bytes(65)) + b"\xff\x00" + sof(16, 16) + SOS
     + ENTROPY + b"\xff\x00\xff\xff\xff\xd2" + EOI, counts(4, 1, 7, (16, 16), 0)),
    # An unreadable EXIF, a progressive frame of just its 5 size bytes, no EOI: the last segment ends the data.
    (SOI + segment(0xE1, b"Exif\x00\x00garbage!!") + segment(0xC2, b"\x08" + struct.pack(">HH", 48, 64)) + SOS
     + b"\x00\x01" + segment(0xFE), counts(4, 1, 0, (64, 48), 0)),
], ids=["structured", "stray-bytes", "truncated"])
def test_a_jpeg_s_segments_scans_stray_bytes_size_and_exif_are_counted_exactly(data, expected):
    assert pc.walk_jpeg(data) == expected
    assert pc.count_jpeg_scans(data) == expected["scans"]


def _scans(count, frame=sof(64, 48), before=b""):
    return SOI + before + frame + (SOS + ENTROPY) * count + EOI


def test_the_scan_bound_is_exact_and_the_reason_names_the_picture_s_size():
    assert pc.container_excess(_scans(32)) is None
    assert pc.container_excess(_scans(33)) == \
        "the JPEG holds more than 32 scans (each one a pass over all 64x48 pixels)"
    assert pc.container_excess(_scans(33, frame=b"")) == \
        "the JPEG holds more than 32 scans (each one a pass over all ?x? pixels)"


@pytest.mark.parametrize("stray", [b"\x00", b"\xff"], ids=["junk", "fill"])
def test_the_stray_byte_bound_is_exact(stray):
    """n bytes of junk, or n bytes of fill before a marker's own 0xFF, are n stray bytes."""
    bound = pc.MAX_JPEG_STRAY_BYTES
    assert pc.container_excess(_scans(1, before=segment(0xE0, JFIF) + stray * bound)) is None
    assert pc.container_excess(_scans(1, before=segment(0xE0, JFIF) + stray * (bound + 1))) == \
        "the JPEG holds more than 16,384 stray bytes between its header's segments"


def test_fill_to_the_end_of_the_data_counts_as_stray_bytes():
    """A truncated header that ends in fill: past what is left of the allowance, refused without reading it
    all (n bytes of fill are at least n - 1 stray bytes; after 1,000 bytes of junk, 16,384 - 900 are too many)."""
    header = SOI + segment(0xE0, JFIF)
    assert "stray bytes" in pc.container_excess(header + b"\xff" * (pc.MAX_JPEG_STRAY_BYTES + 3))
    assert "stray bytes" in pc.container_excess(header + b"\xff" * (2 * pc.MAX_JPEG_STRAY_BYTES))
    junk = b"\x00" * 1000 + segment(0xDB, bytes(65))
    assert "stray bytes" in pc.container_excess(header + junk + b"\xff" * (pc.MAX_JPEG_STRAY_BYTES - 900))


def test_a_run_of_fill_is_read_no_further_than_the_allowance():
    """A megabyte of fill before a marker: the walk stops within the marker's 2 bytes of the allowance."""
    counts = pc.walk_jpeg(_scans(1, before=b"\xff" * 1_000_000))
    assert pc.MAX_JPEG_STRAY_BYTES < counts["stray"] <= pc.MAX_JPEG_STRAY_BYTES + 2 and counts["segments"] == 0


def test_each_bound_stops_the_walk_and_the_others_do_not_hide_the_scans():
    """At its bound exactly a count lets the walk go on (a scan bomb after it is found); past it, the walk
    stops there (the scans after a comment flood are not walked); count_jpeg_scans minds the scans only."""
    at_the_stray_bound = _scans(40, before=segment(0xE0, JFIF) + b"\x00" * pc.MAX_JPEG_STRAY_BYTES)
    assert "more than 32 scans" in pc.container_excess(at_the_stray_bound)
    flooded = _scans(40, before=b"\xff\xfe\x00\x02" * 2000)
    assert pc.container_excess(flooded) == "the JPEG holds more than 1,024 marker segments"
    junk = _scans(40, before=b"\x00" * (2 * pc.MAX_JPEG_STRAY_BYTES))
    assert "stray bytes" in pc.container_excess(junk)
    for data in (flooded, junk):
        assert pc.count_jpeg_scans(data) == pc.MAX_JPEG_SCANS + 1


@pytest.mark.parametrize("data", [
    SOI + segment(0xE0, JFIF) + b"\xff\xdb", SOI + segment(0xE0, JFIF) + b"\xff\xdb\x00",
    SOI + segment(0xE0, JFIF) + b"\xff", SOI + sof(16, 16) + SOS + b"\x12\x34\xff",
    SOI + sof(16, 16) + SOS + b"\x12\x34\xff\xff\xff",
], ids=["after-a-marker", "in-a-length", "after-fill", "scan-ends-in-ff", "scan-ends-in-fill"])
def test_a_truncated_jpeg_is_walked_to_its_end_and_left_to_pillow(data):
    assert pc.container_excess(data) is None
    assert pc.walk_jpeg(data)["stray"] == 0


def test_the_jpeg_exif_bound_is_exact():
    def jpeg(entries):
        return SOI + segment(0xE1, samples.ifd(entries)) + sof(16, 16) + SOS + EOI

    assert pc.container_excess(jpeg(256)) is None
    assert pc.container_excess(jpeg(257)) == "the JPEG's EXIF IFD holds 257 entries, more than 256"


# -------------------------------------------------------------------------------------------- PNG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR = samples.png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
IDAT = samples.png_chunk(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01")
IEND = samples.png_chunk(b"IEND")


def _png_at_bound(extra, unit=samples.png_chunk(b"prVt", bytes(20)), truncated=False):
    """A PNG holding as many chunks as its bound allows (a flat 1,024 and one per 4,096 bytes), plus `extra`;
    `truncated`: no IEND, the data ends with the last chunk's 8-byte header (its data and CRC cut off)."""
    def build(flood):
        tail = unit[:8] if truncated else IDAT + IEND
        return PNG_SIGNATURE + IHDR + unit * flood + tail

    def chunks(flood):
        return 1 + flood + (1 if truncated else 2)

    flood = 0
    while chunks(flood + 1) <= pc.MAX_PNG_CHUNKS + len(build(flood + 1)) // pc.PNG_BYTES_PER_EXTRA_CHUNK:
        flood += 1
    data = build(flood + extra)
    return data, pc.MAX_PNG_CHUNKS + len(data) // pc.PNG_BYTES_PER_EXTRA_CHUNK


@pytest.mark.parametrize("truncated", [False, True], ids=["whole", "truncated"])
def test_the_png_chunk_bound_is_exact_and_grows_with_the_file(truncated):
    data, bound = _png_at_bound(0, truncated=truncated)
    assert bound > pc.MAX_PNG_CHUNKS + 5 and pc.container_excess(data) is None
    data, bound = _png_at_bound(1, truncated=truncated)
    assert pc.container_excess(data) == f"the PNG holds more than {bound:,} chunks (a flat 1,024 and one per 4,096 bytes)"


def test_png_chunks_after_iend_or_past_the_end_are_not_walked():
    flood = samples.png_chunk(b"prVt") * 5000
    assert pc.container_excess(PNG_SIGNATURE + IHDR + IDAT + IEND + flood) is None
    assert pc.container_excess(PNG_SIGNATURE + IHDR + IDAT) is None  # truncated after a whole chunk
    # A length that only a signed reading would take for -12 (the walk would then stand still).
    assert pc.container_excess(PNG_SIGNATURE + IHDR + struct.pack(">I", 0xFFFF_FFF4) + b"prVt") is None


def _apng():
    """A real 3-frame APNG: acTL, the first frame's fcTL before IDAT, then fcTL and fdAT per frame."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _insert_before(data, kind, insert, nth=0):
    at = -1
    for _ in range(nth + 1):
        at = data.index(kind, at + 1)
    return data[:at - 4] + insert + data[at - 4:]


def test_an_apng_is_walked_up_to_its_second_frame_where_pillow_stops():
    apng, flood = _apng(), samples.png_chunk(b"prVt") * 5000
    assert pc.container_excess(apng) is None
    text = samples.png_chunk(b"tEXt", b"Comment\x00after the image")
    after = _insert_before(_insert_before(apng, b"fcTL", text, nth=1), b"fdAT", flood)  # after frame two's fcTL
    assert pc.container_excess(after) is None
    assert "chunks" in pc.container_excess(_insert_before(apng, b"IDAT", flood))  # before frame one's data
    assert "chunks" in pc.container_excess(_insert_before(apng, b"fcTL", flood, nth=1))  # before frame two
    # fcTL with no acTL is no animation: Pillow reads on, and so does the walk.
    still = PNG_SIGNATURE + IHDR + IDAT + samples.png_chunk(b"fcTL", bytes(26)) + flood + IEND
    assert "chunks" in pc.container_excess(still)


def _with_exif_chunk(kind, exif, pad=b""):
    """A chunk of `kind` holding `exif` and then 4 bytes of CRC (PNG) or a pad byte (WebP) of 0x01."""
    if kind == b"eXIf":
        return struct.pack(">I", len(exif)) + kind + exif + b"\x01\x00\x00\x00"
    return kind + struct.pack("<I", len(exif)) + exif + b"\x01" * (len(exif) & 1)


def _png_with(chunk):
    return PNG_SIGNATURE + IHDR + chunk + IDAT + IEND


def _webp_with(chunk):
    body = b"WEBP" + chunk + b"VP8L" + struct.pack("<I", 6) + bytes(6)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("kind, wrap, what", [(b"eXIf", _png_with, "the PNG's eXIf"),
                                              (b"EXIF", _webp_with, "the WebP's EXIF")], ids=["png", "webp"])
def test_the_exif_bound_of_png_and_webp_is_exact_and_read_from_the_chunk_alone(kind, wrap, what):
    assert pc.container_excess(wrap(_with_exif_chunk(kind, samples.ifd(256, prefix=b"")))) is None
    assert pc.container_excess(wrap(_with_exif_chunk(kind, samples.ifd(257, prefix=b"")))) == \
        f"{what} IFD holds 257 entries, more than 256"
    # The header and the entry count and nothing more: the count is read (the entries are what Pillow walks).
    assert "300 entries" in pc.container_excess(wrap(_with_exif_chunk(kind, b"II*\x00\x08\x00\x00\x00\x2c\x01")))
    # The count's second byte is cut off: unreadable, even though the byte after the chunk's data would do.
    assert pc.container_excess(wrap(_with_exif_chunk(kind, b"II*\x00\x08\x00\x00\x00\x2c"))) is None


# ------------------------------------------------------------------------------------------- WebP
def _riff(form, chunks):
    body = form + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


ODD, EVEN = b"ABCD\x01\x00\x00\x00x\x00", b"ABCD\x02\x00\x00\x00xy"  # one byte and its pad; two bytes


@pytest.mark.parametrize("truncated", [False, True], ids=["whole", "truncated"])
def test_the_webp_chunk_bound_is_exact(truncated):
    """Odd chunks carry a pad byte; a truncated last chunk is counted from its 8-byte header."""
    last = [ODD[:8]] if truncated else [EVEN]
    half = pc.MAX_WEBP_CHUNKS // 2
    assert pc.container_excess(_riff(b"WEBP", [ODD, EVEN] * half)) is None
    assert pc.container_excess(_riff(b"WEBP", [ODD, EVEN] * half + last)) == "the WebP holds more than 16,384 chunks"


def test_other_riff_forms_and_webp_chunks_past_the_end_are_not_walked():
    flood = [b"ABCD\x00\x00\x00\x00"] * (pc.MAX_WEBP_CHUNKS + 10)
    assert "chunks" in pc.container_excess(_riff(b"WEBP", flood))
    assert pc.container_excess(_riff(b"WAVE", flood)) is None  # the allowlist refuses it
    assert pc.container_excess(_riff(b"WEBP", [b"ABCD" + struct.pack("<I", 0xFFFF_FFF8)])) is None  # not -8


# -------------------------------------------------------------------------------------------- GIF
def _gif(flags, blocks):
    """A GIF header (with a global colour table when flags says so), `blocks`, then an image descriptor."""
    table = bytes(3 << ((flags & 7) + 1)) if flags & 0x80 else b""
    image = b"\x2c" + bytes(8) + b"\x00" + b"\x02\x02\x4c\x01\x00" + b"\x3b"
    return b"GIF89a" + struct.pack("<HH", 64, 64) + bytes([flags, 0, 0]) + table + blocks + image


EXTENSION = b"\x21\xfe" + b"\x01x" * 3 + b"\x00"  # a comment: three one-byte sub-blocks and the terminator


@pytest.mark.parametrize("flags", [0x00, 0x01, 0x80, 0x82, 0xF7], ids=["none", "size-bits-only", "2", "8", "256"])
def test_the_gif_block_bound_is_exact_whatever_the_colour_table(flags):
    """4 blocks per comment: 1,024 of them are the bound; one more (an empty one) is refused."""
    assert pc.container_excess(_gif(flags, EXTENSION * 1024)) is None
    assert pc.container_excess(_gif(flags, EXTENSION * 1024 + b"\x21\xfe\x00")) == \
        "the GIF holds more than 4,096 extension blocks before its image"


def test_gif_blocks_after_the_image_are_not_walked_and_a_truncated_gif_is_left_to_pillow():
    after = _gif(0x80, b"") + EXTENSION * 2000
    assert pc.container_excess(after) is None
    header = _gif(0x00, b"")[:13]
    for data in (header[:10], header[:12], header, header + EXTENSION, header + EXTENSION[:4],
                 header + EXTENSION[:-1]):
        assert pc.container_excess(data) is None


# ------------------------------------------------------------------------------------------- TIFF
SHORT, LONG = 3, 4


def _tiff(entries, endian="<", big=False, next_offset=True):
    """A TIFF whose first IFD holds `entries`, (tag, kind, count, value) each; a value that fits the entry's
    field is stored there (left-justified, as TIFF does), any other is the offset it would be at."""
    magic = (b"II" if endian == "<" else b"MM") + struct.pack(endian + "H", 43 if big else 42)
    header = magic + (struct.pack(endian + "HHQ", 8, 0, 16) if big else struct.pack(endian + "I", 8))
    field, offset_format = (8, "Q") if big else (4, "I")
    body = struct.pack(endian + ("Q" if big else "H"), len(entries))
    for tag, kind, count, value in entries:
        fits = count == 1 and kind in (SHORT, LONG)
        packed = struct.pack(endian + ("H" if kind == SHORT else "I"), value) if fits else \
            struct.pack(endian + offset_format, value)
        body += struct.pack(endian + ("HHQ" if big else "HHI"), tag, kind, count) + packed.ljust(field, b"\x00")
    return header + body + (bytes(field) if next_offset else b"")


LAYOUTS = pytest.mark.parametrize("endian, big", [("<", False), (">", False), ("<", True), (">", True)],
                                  ids=["II", "MM", "II-big", "MM-big"])


@LAYOUTS
def test_the_tiff_ifd_bound_is_exact(endian, big):
    def tiff(entries):
        return _tiff([(40_000 + n, SHORT, 1, 1) for n in range(entries)], endian, big)

    assert pc.container_excess(tiff(256)) is None
    assert pc.container_excess(tiff(257)) == "the TIFF's first IFD holds 257 entries, more than 256"


@LAYOUTS
@pytest.mark.parametrize("width, height, blocks_tag", [
    ((SHORT, 1000), (LONG, 70_000), 273), ((SHORT, 40_000), (LONG, 2000), 324), ((LONG, 3_000_000_000), (SHORT, 1), 273),
], ids=["short-width-strips", "wide-short-tiles", "huge-long-width"])
def test_the_tiff_block_bound_is_exact_and_grows_with_the_declared_pixels(endian, big, width, height, blocks_tag):
    bound = pc.MAX_TIFF_BLOCKS + width[1] * height[1] // pc.TIFF_PIXELS_PER_EXTRA_BLOCK

    def tiff(blocks):
        return _tiff([(256, width[0], 1, width[1]), (257, height[0], 1, height[1]), (blocks_tag, LONG, blocks, 4096)],
                     endian, big)

    assert pc.container_excess(tiff(bound)) is None
    assert pc.container_excess(tiff(bound + 1)) == (
        f"the TIFF's first page holds {bound + 1:,} strips or tiles, more than {bound:,} "
        f"(a flat 1,024 and one per 4,096 pixels)")


@pytest.mark.parametrize("entries", [
    [(257, LONG, 1, 40_960_000), (273, LONG, 5000, 4096)],  # no width
    [(256, LONG, 1, 40_960_000), (273, LONG, 5000, 4096)],  # no height
    [(256, LONG, 2, 4_000_000), (257, LONG, 1, 40_960_000), (273, LONG, 5000, 4096)],  # a width of two numbers
], ids=["no-width", "no-height", "two-number-width"])
def test_a_size_the_walk_cannot_read_leaves_the_flat_block_bound(entries):
    assert "5,000 strips or tiles, more than 1,024 " in pc.container_excess(_tiff(entries))


@LAYOUTS
def test_the_largest_counts_a_tiff_field_holds_are_refused(endian, big):
    largest = 2 ** 64 - 1 if big else 2 ** 32 - 1
    assert "strips or tiles" in pc.container_excess(_tiff([(256, SHORT, 1, 16), (273, LONG, largest, 8)], endian, big))
    count = struct.pack(endian + ("Q" if big else "H"), 2 ** 64 - 1 if big else 0xFFFF)
    header = _tiff([], endian, big)[:16 if big else 8]
    assert f"{struct.unpack(endian + ('Q' if big else 'H'), count)[0]:,} entries" in pc.container_excess(header + count)


@LAYOUTS
def test_an_ifd_offset_past_the_end_is_not_followed(endian, big):
    header = bytearray(_tiff([], endian, big)[:16 if big else 8])
    struct.pack_into(endian + ("Q" if big else "I"), header, 8 if big else 4, (2 ** 64 if big else 2 ** 32) - 16)
    assert pc.container_excess(bytes(header) + b"\xff" * 16) is None
    assert pc.ifd_entries(bytes(header) + b"\xff" * 16) == 0


def test_a_truncated_ifd_is_walked_as_far_as_it_goes():
    strips = [(256, SHORT, 1, 16), (257, SHORT, 1, 16), (273, LONG, 5000, 4096)]
    declared_more = _tiff(strips + [(40_000, SHORT, 1, 1)] * 7, next_offset=False)[:8 + 2 + 12 * 3 + 5]
    assert "5,000 strips" in pc.container_excess(declared_more)
    assert "5,000 strips" in pc.container_excess(_tiff(strips, next_offset=False))  # its last entry ends the data


@pytest.mark.parametrize("big", [False, True], ids=["classic", "big"])
def test_an_ifd_offset_into_the_header_is_followed(big):
    """A header that points at itself (offset 0): its first bytes are read as the entry count, as a reader would."""
    header = bytearray(_tiff([], "<", big)[:16 if big else 8])
    struct.pack_into("<Q" if big else "<I", header, 8 if big else 4, 0)
    count = struct.unpack_from("<Q" if big else "<H", header)[0]
    assert pc.container_excess(bytes(header)) == f"the TIFF's first IFD holds {count:,} entries, more than 256"
    assert pc.container_excess(bytes(header)[:12 if big else 7]) is None  # shorter than its header


def test_ifd_entries_reads_the_count_with_or_without_the_exif_prefix():
    assert pc.ifd_entries(samples.ifd(7)) == pc.ifd_entries(samples.ifd(7, prefix=b"")) == 7
    assert pc.ifd_entries(b"Exif\x00\x00garbage!!") == pc.ifd_entries(b"") == 0
