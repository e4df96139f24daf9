"""Picture decoding shared by training and serving (images.py): the format allowlist, the header checks,
EXIF orientation, and decoding big pictures small (JPEG draft, box reduction) for serving."""
import io
import struct
import time

import pytest
from PIL import Image

import serving_samples as samples
from image_classifier import images, picture_containers


@pytest.mark.parametrize("name", sorted(samples.GOOD_PICTURES))
def test_every_picture_mode_becomes_rgb(name):
    _, make = samples.GOOD_PICTURES[name]
    assert images.open_rgb(make()).mode == "RGB"


@pytest.mark.parametrize("data", [samples.ico(), b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"],
                         ids=["ico", "eps"])
def test_formats_outside_the_allowlist_are_refused_unread(tmp_path, data):
    """The same for training (a path) and serving (bytes): Pillow reads ICO and EPS, we do not."""
    path = tmp_path / "picture.jpg"
    path.write_bytes(data)
    for source in (path, data):
        with pytest.raises(Image.UnidentifiedImageError):
            images.open_rgb(source)
        with pytest.raises(Image.UnidentifiedImageError):
            images.read_header(source)


def test_the_pixel_cap_is_checked_from_the_header():
    with pytest.raises(images.ImageTooLargeError, match="7000x7000 pixels, more than 1,000,000"):
        images.read_header(samples.pixel_bomb_webp(), max_pixels=1_000_000)
    with pytest.raises(images.ImageTooLargeError):
        images.open_rgb(samples.bomb_png())  # 400 MP: Pillow's own bomb guard, raised as our error


@pytest.mark.parametrize("min_side", [None, 5])
def test_exif_orientation_is_applied_before_and_after_reduction(min_side):
    upright = images.open_rgb(samples.exif_rotated_jpeg(width=40, height=20), min_side=min_side)
    assert upright.width < upright.height


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "RGBA"), ("WEBP", "RGB"),
                                       ("TIFF", "RGB"), ("TIFF", "1"), ("TIFF", "CMYK"), ("JPEG", "L")])
def test_exif_orientation_survives_the_box_reduction(fmt, mode):
    """Reduced directly or converted first (palette, 1-bit, 16-bit), a picture keeps its EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    picture = samples.encode(samples.rgb_image((800, 400)).convert(mode), fmt, exif=exif.tobytes())
    assert images.open_rgb(picture).size == (400, 800)
    assert images.open_rgb(picture, min_side=100).size == (100, 200)  # reduced by 4, then turned upright


def test_a_big_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_short_side():
    header = images.read_header(samples.big_jpeg(), min_side=256)
    assert (header.size, header.decoded_size, header.decoded_pixels) == ((4000, 3000), (500, 375), 187_500)
    assert images.open_rgb(samples.big_jpeg(), min_side=256).size == (500, 375)
    assert images.read_header(samples.big_jpeg(), min_side=400).decoded_size == (1000, 750)  # 1/4: 375 < 400
    assert images.open_rgb(samples.big_jpeg()).size == (4000, 3000)  # training: full size


@pytest.mark.parametrize("mode", ["RGB", "P", "1", "I;16", "RGBA", "L"])
def test_big_pictures_of_any_mode_are_reduced_and_keep_the_short_side(mode):
    picture = Image.new("RGB", (1000, 600), (10, 200, 30)).convert(mode, dither=Image.Dither.NONE)
    decoded = images.open_rgb(samples.encode(picture, "PNG" if mode != "1" else "BMP"), min_side=100)
    assert decoded.mode == "RGB" and decoded.size == (167, 100)  # reduced by 6, rounded up
    assert decoded.getpixel((80, 50)) == images.open_rgb(samples.encode(picture, "PNG" if mode != "1" else "BMP")
                                                         ).getpixel((480, 300))  # same colour as full size


def test_small_pictures_are_not_reduced():
    assert images.open_rgb(samples.png((40, 30)), min_side=100).size == (40, 30)


def test_eval_resize_is_torchvision_s_256_for_224():
    assert images.eval_resize(224) == 256 and images.eval_resize(16) == 18


# ------------------------------------------------------------------------- JPEG scans (issue 20)
@pytest.mark.parametrize("mode, options, scans", [
    ("RGB", {}, 1), ("RGB", {"progressive": True}, 10), ("RGB", {"progressive": True, "optimize": True}, 10),
    ("L", {"progressive": True}, 6), ("CMYK", {"progressive": True}, 18),
], ids=["baseline", "progressive", "progressive-optimized", "grey-progressive", "cmyk-progressive"])
def test_the_scans_of_real_encoders_are_counted_and_accepted(mode, options, scans):
    data = samples.encode(samples.rgb_image((64, 48)).convert(mode), "JPEG", **options)
    assert picture_containers.count_jpeg_scans(data) == scans <= picture_containers.MAX_JPEG_SCANS
    assert images.open_rgb(data, min_side=16).mode == "RGB"


def test_scans_are_counted_from_the_marker_segments_not_from_bytes_that_look_like_markers():
    """A comment full of SOS bytes is skipped by its length; garbage before a marker, which libjpeg skips
    with a warning, does not hide the scans after it."""
    fake = samples.encode(samples.rgb_image(), "JPEG", comment=b"\xff\xda" * 100)
    assert fake.count(b"\xff\xda") == 101 and picture_containers.count_jpeg_scans(fake) == 1
    images.read_header(fake)
    bomb = samples.scan_bomb_jpeg(side=64, repeats=40)
    scan = bomb.index(b"\xff\xda", bomb.index(b"\xff\xda") + 2)
    hidden = bomb[:scan] + b"\x00garbage" + bomb[scan:]
    assert picture_containers.count_jpeg_scans(hidden) == picture_containers.MAX_JPEG_SCANS + 1


def _noise(size=(64, 48)):
    """Random pixels: entropy-coded data of every byte value, so a misread length lands anywhere."""
    import numpy as np

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("options, scans", [({"restart_marker_blocks": 1}, 1),
                                            ({"restart_marker_blocks": 1, "progressive": True}, 10),
                                            ({"restart_marker_rows": 1, "progressive": True}, 10)])
def test_restart_markers_carry_no_length_and_hide_no_scan(options, scans):
    """RST0-7 stand alone inside a scan's data (libjpeg resynchronises on them): read as segments with a
    length, they would skip bytes of the data and the markers after them, scans included."""
    data = samples.encode(_noise(), "JPEG", **options)
    assert sum(data.count(bytes([0xFF, marker])) for marker in range(0xD0, 0xD8)) >= 10
    assert picture_containers.count_jpeg_scans(data) == scans
    assert images.open_rgb(data).size == (64, 48)


def _with_mpf_segment(jpeg):
    """`jpeg` with the MPF APP2 segment of a real two-picture MPO (a camera's stereo pair or a phone's
    depth map) after its SOI: Pillow opens such a file as MPO."""
    mpo = io.BytesIO()
    _noise().save(mpo, "MPO", save_all=True, append_images=[_noise((32, 24))])
    mpo = mpo.getvalue()
    start = mpo.index(b"\xff\xe2")
    length = struct.unpack(">H", mpo[start + 2:start + 4])[0]
    assert mpo[start + 4:start + 8] == b"MPF\x00"
    return jpeg[:2] + mpo[start:start + 2 + length] + jpeg[2:]


def test_an_mpo_is_read_and_an_mpo_scan_bomb_refused():
    """The scan limit holds whatever the JPEG's APP segments say: an MPF segment makes Pillow open an MPO."""
    real = io.BytesIO()
    _noise().save(real, "MPO", save_all=True, append_images=[_noise((32, 24))])
    assert images.read_header(real.getvalue()).format == "MPO"
    assert images.open_rgb(real.getvalue()).size == (64, 48)
    bomb = _with_mpf_segment(samples.scan_bomb_jpeg(side=64, repeats=40))
    assert picture_containers.count_jpeg_scans(bomb) == picture_containers.MAX_JPEG_SCANS + 1
    for read in (images.read_header, images.open_rgb):
        with pytest.raises(images.ImageTooLargeError, match="more than 32 scans"):
            read(bomb)


def test_the_progressive_scan_bomb_is_refused_before_decoding(tmp_path):
    """Issue 20's attack: 7000x7000, one scan repeated 3,000 times (about 16 s of decoding)."""
    bomb = samples.scan_bomb_jpeg()
    assert len(bomb) < 500_000 and picture_containers.count_jpeg_scans(bomb, stop_after=10 ** 6) > 3_000
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb)
    for source in (bomb, path):  # serving (bytes) and training (a path)
        started = time.perf_counter()
        with pytest.raises(images.ImageTooLargeError, match="more than 32 scans"):
            images.open_rgb(source, min_side=256)
        with pytest.raises(images.ImageTooLargeError, match="more than 32 scans"):
            images.read_header(source)
        assert time.perf_counter() - started < 1


def test_training_counts_a_scan_bomb_as_a_bad_picture(tmp_path, caplog):
    """Training decodes with the same code: the picture is skipped and counted at scan time, and the
    loader's decoding refuses it too (a BadPicture, counted per epoch)."""
    from image_classifier.training import data, layout

    good = tmp_path / "good.jpg"
    samples.rgb_image((32, 32)).save(good)
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(samples.scan_bomb_jpeg(side=64, repeats=40))
    kept, bad = layout.check_pictures([(str(good), 0), (str(bomb), 1)], "skip", "train")
    assert kept == [(str(good), 0)] and bad == [str(bomb)]
    assert "Skipping 1 unreadable picture(s)" in caplog.text and "scans" in caplog.text
    with pytest.raises(layout.DataError, match="bomb.jpg"):
        layout.check_pictures([(str(bomb), 1)], "fail", "train")
    dataset = data.PictureDataset([(str(bomb), 0)], lambda image: image)
    assert isinstance(dataset[0], data.BadPicture) and "scans" in dataset[0]


def test_charged_pixels_are_the_declared_size_or_the_upsampled_one():
    assert images.charged_pixels((4000, 3000), 256) == 12_000_000  # a drafted JPEG still reads every pixel
    assert images.charged_pixels((1, 1), 256) == 256 * 256
    assert images.charged_pixels((1, 50_000), 256) == 256 * 12_800_000
    assert images.charged_pixels((300, 200), 256) == 384 * 256


# -------------------------------------------------------- containers (issue 31, item 10)
@pytest.mark.parametrize("name", sorted(samples.HOSTILE_CONTAINERS))
def test_a_hostile_container_is_refused_from_its_bytes_before_pillow_opens_it(name, monkeypatch):
    """Floods of segments, chunks, blocks or IFD entries are counted from the bytes: Pillow is never asked."""
    make, words = samples.HOSTILE_CONTAINERS[name]
    data = make()
    assert words in picture_containers.container_excess(data)

    def pillow(*args, **kwargs):
        raise AssertionError("Pillow opened a hostile container")

    monkeypatch.setattr(images.Image, "open", pillow)
    started = time.perf_counter()
    for check in (images.read_header, images.open_rgb):
        with pytest.raises(images.ImageTooLargeError, match=words):
            check(data)
    assert time.perf_counter() - started < 1  # a sanity bound: the walks stop at their bounds


@pytest.mark.parametrize("name", sorted(samples.CAMERA_PICTURES))
def test_pictures_as_cameras_and_phones_write_them_still_decode(name):
    data = samples.CAMERA_PICTURES[name]()
    assert picture_containers.container_excess(data) is None
    assert images.open_rgb(data, min_side=64).mode == "RGB"


def test_the_phone_jpeg_carries_what_phones_write():
    """So that the test above means something: EXIF with a thumbnail, a 600 KB ICC profile in 10 APP2
    segments, XMP, a comment, ten progressive scans."""
    data = samples.phone_jpeg()
    with Image.open(io.BytesIO(data)) as image:
        assert len(image.info["icc_profile"]) == 600_000 and image.info["xmp"] and image.info["comment"]
        assert image.getexif().get_ifd(0x8769)[0x927C][:2] == b"\xff\xd8"  # the thumbnail
    counts = picture_containers.walk_jpeg(data)
    assert data.count(b"\xff\xe2\xff\xef") == 0 and counts["scans"] == 10 and 30 < counts["segments"] < 100


@pytest.mark.parametrize("extra, refused", [(0, False), (1, True)])
def test_the_jpeg_segment_bound_is_exact(extra, refused):
    """A picture at the bound passes; one segment more is refused."""
    picture = samples.jpeg((16, 16))
    own = picture_containers.walk_jpeg(picture)["segments"]
    comments = b"\xff\xfe\x00\x02" * (picture_containers.MAX_JPEG_SEGMENTS - own + extra)
    assert bool(picture_containers.container_excess(picture[:2] + comments + picture[2:])) is refused


def test_a_big_png_split_into_libpng_s_8_kb_idats_passes():
    """The PNG bound grows with the file: a noisy 1500x1000 PNG (about 4 MB) split into libpng's 8 KB IDATs
    passes; split into 256-byte IDATs (more chunks than the flat allowance and one per 4 KB) it does not."""
    picture = samples.png((1500, 1000))
    start, end = picture.index(b"IDAT") - 4, picture.index(b"IEND") - 4
    stream = b"".join(picture[at + 8:at + 8 + struct.unpack(">I", picture[at:at + 4])[0]]
                      for at in _chunks(picture, start, end))

    def split(size):
        chunks = b"".join(samples.png_chunk(b"IDAT", stream[i:i + size]) for i in range(0, len(stream), size))
        return picture[:start] + chunks + picture[end:]

    assert picture_containers.container_excess(split(8192)) is None
    assert images.open_rgb(split(8192), min_side=256).size == (500, 334)  # box-reduced by 3
    assert "chunks" in picture_containers.container_excess(split(256))


def _chunks(png, start, end):
    while start < end:
        yield start
        start += 12 + struct.unpack(">I", png[start:start + 4])[0]


def test_training_skips_a_hostile_container_before_pillow_walks_it(tmp_path, monkeypatch):
    """check_pictures counts the container before its Pillow verify() (which walks every chunk), and the
    loader's decoding refuses it too."""
    from image_classifier.training import data, layout

    good = tmp_path / "good.png"
    good.write_bytes(samples.phone_png())
    flood = tmp_path / "flood.png"
    flood.write_bytes(samples.png_chunk_flood())
    opened, pillow_open = [], Image.open
    monkeypatch.setattr(Image, "open", lambda source, *args, **kwargs: opened.append(source) or pillow_open(
        source, *args, **kwargs))
    kept, bad = layout.check_pictures([(str(good), 0), (str(flood), 1)], "skip", "train")
    assert str(flood) not in opened and str(good) in opened
    assert kept == [(str(good), 0)] and bad == [str(flood)]
    dataset = data.PictureDataset([(str(flood), 0)], lambda image: image)
    assert isinstance(dataset[0], data.BadPicture) and "chunks" in dataset[0]


# ------------------------------------------------- colours, transparency, limits (issue 34: mutation score)
def _row(mode, pixels, palette=None):
    image = Image.new(mode, (len(pixels), 1))
    if palette:
        image.putpalette(palette + [0] * (768 - len(palette)))
    for x, value in enumerate(pixels):
        image.putpixel((x, 0), value)
    return image


_PALETTE = [0, 0, 0, 10, 200, 30, 250, 100, 5]  # black, green, orange


def _palette_with_transparency():
    image = _row("P", [1, 2, 0], _PALETTE)
    image.info["transparency"] = 2  # the orange entry
    return image


@pytest.mark.parametrize("image, expected", [
    (_row("RGB", [(10, 200, 30)]), [(10, 200, 30)]),
    (_row("L", [77]), [(77, 77, 77)]),
    (_row("P", [1, 2], _PALETTE), [(10, 200, 30), (250, 100, 5)]),
    (_palette_with_transparency(), [(10, 200, 30), (255, 255, 255), (0, 0, 0)]),
    (_row("RGBA", [(10, 200, 30, 255), (10, 200, 30, 0), (10, 200, 30, 128)]),
     [(10, 200, 30), (255, 255, 255), (132, 227, 142)]),
    (_row("LA", [(100, 255), (100, 0)]), [(100, 100, 100), (255, 255, 255)]),
    (_row("PA", [(1, 255), (2, 0), (1, 128)], _PALETTE), [(10, 200, 30), (255, 255, 255), (132, 227, 142)]),
], ids=["rgb", "grey", "palette", "palette-transparency", "rgba", "la", "pa"])
def test_colours_are_kept_and_transparent_areas_become_white(image, expected):
    rgb = images.to_rgb(image)
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0)) for x in range(rgb.width)] == expected


def test_a_colour_key_in_a_grey_or_rgb_picture_is_ignored():
    """Only palettes and alpha channels make areas white: a colour key (a grey or RGB PNG's tRNS) could not
    survive the box reduction (averaged pixels no longer match it), so it is ignored at every size alike."""
    for mode, key, expected in (("L", 77, (77, 77, 77)), ("RGB", (10, 200, 30), (10, 200, 30))):
        image = _row(mode, [key])
        image.info["transparency"] = key
        assert images.to_rgb(image).getpixel((0, 0)) == expected


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_16_bit_and_float_greys_are_scaled_by_their_range_not_clipped(mode):
    """1000..3000 spans 0..255 (clipping would make all four white); a one-value picture is black."""
    rgb = images.to_rgb(_row(mode, [1000, 1500, 2500, 3000]))
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (63, 63, 63), (191, 191, 191), (255,) * 3]
    flat = images.to_rgb(_row(mode, [3000, 3000]))
    assert flat.mode == "RGB" and [flat.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0)] * 2


def test_the_pixel_cap_is_exact():
    picture = samples.png((100, 100))
    for read in (images.read_header, images.open_rgb):
        read(picture, max_pixels=10_000)
        with pytest.raises(images.ImageTooLargeError, match="100x100 pixels, more than 9,999"):
            read(picture, max_pixels=9_999)


def test_pillow_s_bomb_error_and_warning_are_refused_as_too_large():
    """Above twice Pillow's MAX_IMAGE_PIXELS it raises; between once and twice it only warns, which the
    reads turn into the same refusal (given a pixel cap that lets the picture through)."""
    for read in (images.read_header, images.open_rgb):
        with pytest.raises(images.ImageTooLargeError, match="could be decompression bomb"):
            read(samples.bomb_png(side=20_000), max_pixels=10 ** 9)  # 400 MP: the error
        with pytest.raises(images.ImageTooLargeError, match="could be decompression bomb"):
            read(samples.bomb_png(side=10_000), max_pixels=10 ** 9)  # 100 MP: the warning


def _jpeg_with_broken_exif():
    """A JPEG whose EXIF says 'rotate 90°' and has a tag whose data lies past the block's end (Pillow warns)."""
    tiff = (b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 0x010E, 2, 100, 4000)
            + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x00")
    return samples.encode(samples.rgb_image((40, 20)), "JPEG", exif=b"Exif\x00\x00" + tiff)


def test_pillow_s_other_warnings_stay_warnings():
    """Only the bomb warning becomes an error: a picture with a broken EXIF tag is read, and turned upright."""
    with pytest.warns(UserWarning, match="Skipping tag 270"):
        assert images.open_rgb(_jpeg_with_broken_exif()).size == (20, 40)
    with pytest.warns(UserWarning, match="Skipping tag 270"):
        assert images.read_header(_jpeg_with_broken_exif()).size == (40, 20)


def test_a_picture_twice_the_short_side_is_halved():
    assert images.open_rgb(samples.png((200, 120)), min_side=60).size == (100, 60)
    assert images.open_rgb(samples.png((200, 119)), min_side=60).size == (200, 119)


def test_a_mode_reduce_does_not_handle_is_converted_first():
    """A CIELab TIFF opens as "LAB", which `reduce` refuses: it is reduced as RGB, to the colour of its full size."""
    data = samples.encode(Image.new("LAB", (400, 200), (50, 10, 20)), "TIFF")
    full, small = images.open_rgb(data), images.open_rgb(data, min_side=50)
    assert small.size == (100, 50) and small.getpixel((50, 25)) == full.getpixel((200, 100))


def _half_transparent(mode):
    """A 400x200 picture, green on the right, transparent on the left, in `mode`."""
    image = Image.new("RGBA", (400, 200), (10, 200, 30, 255))
    image.paste((0, 0, 0, 0), (0, 0, 200, 200))
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
        image.info["transparency"] = image.getpixel((0, 0))
        return image
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_survives_the_reduction(mode):
    decoded = images.open_rgb(samples.encode(_half_transparent(mode), "PNG"), min_side=50)
    assert decoded.size == (100, 50)  # reduced by 4
    assert decoded.getpixel((10, 25)) == (255, 255, 255)
    assert decoded.getpixel((90, 25)) == ((10, 200, 30) if mode != "LA" else (124, 124, 124))  # LA: its grey
