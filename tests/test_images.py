"""The image loader on every kind of bad or unusual input: exact outcome for each."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxgan.data.image_files import is_image_path
from jaxgan.data.images import LoadOptions, load_image

OPTS = LoadOptions(image_size=32, min_source_size=8)


def _encode(img, fmt, **kwargs):
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _write(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def test_plain_jpeg_is_resized(tmp_path):
  img = Image.new("RGB", (100, 100), (200, 30, 30))
  out = load_image(_write(tmp_path, "a.jpg", _encode(img, "JPEG", quality=95)), OPTS)
  assert out.reason == "" and out.image.shape == (32, 32, 3) and out.image.dtype == np.uint8
  assert abs(int(out.image[16, 16, 0]) - 200) < 6 and out.image[16, 16, 1] < 40


def test_an_image_smaller_than_the_size_asked_for_is_marked_upscaled(tmp_path):
  wide = _write(tmp_path, "w.png", _encode(Image.new("RGB", (40, 10), "red"), "PNG"))
  assert [load_image(wide, LoadOptions(size)).upscaled for size in (32, 40, 64, 0)] == [
      False, False, True, False]  # the long side counts (the square padded from it); 0: native


def test_truncated_jpeg_is_rejected(tmp_path):
  data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
  out = load_image(_write(tmp_path, "t.jpg", data[: len(data) // 2]), OPTS)
  assert out.image is None and out.reason.startswith("truncated or corrupt")
  # Cut inside its header: Pillow's OSError at open, of the bytes, not of the storage (it read
  # 'unreadable', as a permission or disk problem does).
  small = _encode(Image.new("RGB", (8, 8), "red"), "JPEG")
  out = load_image(_write(tmp_path, "h.jpg", small[: len(small) // 2]), OPTS)
  assert (out.image, out.reason, out.transient) == (None, "truncated or corrupt: Truncated File "
                                                    "Read", False)


def test_zero_bytes_is_rejected(tmp_path):
  assert load_image(_write(tmp_path, "z.jpg", b""), OPTS).reason == "empty file"


def test_a_broken_link_says_so(tmp_path):
  """A link whose target moved read 'unreadable: No such file or directory' beside the link's
  own path, which does exist."""
  os.symlink(tmp_path / "moved.jpg", tmp_path / "l.jpg")
  out = load_image(str(tmp_path / "l.jpg"), OPTS)
  assert out.image is None and out.reason == (
      f"a broken link (to {os.path.realpath(tmp_path / 'moved.jpg')}, missing)")
  os.symlink("l.jpg", tmp_path / "chain.jpg")  # through another link, given relative
  assert load_image(str(tmp_path / "chain.jpg"), OPTS).reason == out.reason
  assert not out.transient


def test_text_named_jpg_is_rejected(tmp_path):
  out = load_image(_write(tmp_path, "x.jpg", b"this is not a photo\n" * 10), OPTS)
  assert out.image is None and out.reason == "not an image"


def test_cmyk_becomes_rgb(tmp_path):
  img = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
  out = load_image(_write(tmp_path, "c.jpg", _encode(img, "JPEG", quality=95)), OPTS)
  r, g, b = (int(v) for v in out.image[16, 16])
  assert out.image.shape == (32, 32, 3) and r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path):
  arr = np.full((40, 40), 32768, np.uint16)  # mid grey in 16 bits
  out = load_image(_write(tmp_path, "g16.png", _encode(Image.fromarray(arr), "PNG")), OPTS)
  assert out.image.shape == (32, 32, 3)
  np.testing.assert_allclose(out.image[16, 16].astype(int), [128, 128, 128], atol=1)


@pytest.mark.parametrize("name, fmt", [("rgb.tif", "TIFF"), ("rgb.TIFF", "TIFF"),
                                       ("photo.jfif", "JPEG"), ("photo.jpe", "JPEG")])
def test_tiff_and_jpeg_by_other_names_are_images(tmp_path, name, fmt):
  path = _write(tmp_path, name, _encode(Image.new("RGB", (40, 40), (200, 30, 30)), fmt))
  assert is_image_path(path)
  r, g, b = load_image(path, OPTS).image[16, 16].astype(int)
  assert r > 190 and g < 45 and b < 45


def test_16bit_tiff_is_scaled_not_clipped(tmp_path):
  arr = np.full((40, 40), 32768, np.uint16)
  out = load_image(_write(tmp_path, "g16.tif", _encode(Image.fromarray(arr), "TIFF")), OPTS)
  np.testing.assert_allclose(out.image[16, 16].astype(int), [128, 128, 128], atol=1)


@pytest.mark.patches_traced_code
def test_dark_16bit_png_opened_as_mode_i_stays_16bit(tmp_path, monkeypatch):
  """Pillow 10 (allowed by pyproject) opens 16-bit grey PNGs as mode "I", not "I;16": a dark one
  (every value <= 255) must still scale by 65535, not read as 8-bit. Pillow 10's mode table is
  patched in, so the test holds on any installed Pillow."""
  from PIL import PngImagePlugin

  monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
  arr = np.full((40, 40), 200, np.uint16)  # 200 / 65535 of white: nearly black
  path = _write(tmp_path, "dark16.png", _encode(Image.fromarray(arr), "PNG"))
  with Image.open(path) as img:
    assert img.mode == "I"  # what Pillow 10 does
  out = load_image(path, OPTS)
  np.testing.assert_array_equal(out.image[16, 16], [1, 1, 1])
  # An EXIF-rotated one too (the rotation returns a copy without the format).
  img = Image.fromarray(arr)
  exif = Image.Exif()
  exif[0x0112] = 6
  rotated = load_image(_write(tmp_path, "rot16.png", _encode(img, "PNG", exif=exif)), OPTS)
  np.testing.assert_array_equal(rotated.image[16, 16], [1, 1, 1])


def test_16bit_png_colour_key_becomes_the_background(tmp_path):
  """A 16-bit grey PNG with a tRNS colour key: the keyed pixels are transparent (white), not the
  key's grey. Rebuilding the image to scale it to 8 bits used to drop the key."""
  arr = np.full((40, 40), 1000, np.uint16)  # transparent background (the key) ...
  arr[10:30, 10:30] = 16384  # ... around an opaque dark-grey product
  img = Image.new("I;16", (40, 40))
  img.frombytes(arr.astype("<u2").tobytes())
  out = load_image(_write(tmp_path, "k16.png", _encode(img, "PNG", transparency=1000)), OPTS)
  np.testing.assert_array_equal(out.image[1, 1], [255, 255, 255])
  np.testing.assert_allclose(out.image[16, 16].astype(int), [64, 64, 64], atol=1)


def test_transparent_background_becomes_white_not_black(tmp_path):
  img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent black
  img.paste((0, 0, 255, 255), (10, 10, 30, 30))  # an opaque blue product
  out = load_image(_write(tmp_path, "t.png", _encode(img, "PNG")), OPTS)
  np.testing.assert_array_equal(out.image[1, 1], [255, 255, 255])
  assert tuple(out.image[16, 16]) == (0, 0, 255)


def test_transparent_palette_and_custom_background(tmp_path):
  img = Image.new("P", (20, 20), 0)
  img.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
  img.paste(1, (5, 5, 15, 15))
  data = _encode(img, "PNG", transparency=0)
  out = load_image(_write(tmp_path, "p.png", data), LoadOptions(20, background=(240, 240, 0)))
  assert tuple(out.image[0, 0]) == (240, 240, 0) and tuple(out.image[10, 10]) == (10, 200, 10)


def test_colour_key_transparency_becomes_the_background(tmp_path):
  # PNG tRNS colour keys on RGB and L images (not only palettes) mark transparent pixels.
  rgb = Image.new("RGB", (20, 20), (0, 0, 0))
  rgb.paste((0, 0, 255), (5, 5, 15, 15))
  grey = Image.new("L", (20, 20), 0)
  grey.paste(90, (5, 5, 15, 15))
  for name, img, key, inside in [("rgb.png", rgb, (0, 0, 0), (0, 0, 255)),
                                 ("l.png", grey, 0, (90, 90, 90))]:
    out = load_image(_write(tmp_path, name, _encode(img, "PNG", transparency=key)), LoadOptions(20))
    assert tuple(out.image[0, 0]) == (255, 255, 255), name
    assert tuple(out.image[10, 10]) == inside, name


def test_truncated_animated_gif_is_rejected_not_raised(tmp_path):
  # PIL raises IndexError (not OSError) from n_frames on some cuts of a multi-frame GIF.
  rng = np.random.default_rng(0)
  frames = [Image.fromarray((rng.random((40, 30, 3)) * 255).astype(np.uint8)).convert("P")
            for _ in range(2)]
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
  data = buf.getvalue()
  reasons = {load_image(data[:cut], LoadOptions(16)).reason.split(":")[0]
             for cut in range(len(data) // 2, len(data) - 1, 7)}
  assert "truncated or corrupt" in reasons  # and the loop above raised nothing
  out = load_image(_write(tmp_path, "whole.gif", data), LoadOptions(16))
  assert out.reason == "" and out.image.shape == (16, 16, 3)


def _png_header_only(width, height):
  """A PNG whose header claims width x height, with no pixel data to speak of."""
  def chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_dimensions_rejected_from_the_header(tmp_path):
  out = load_image(_write(tmp_path, "huge.png", _png_header_only(100_000, 100_000)), OPTS)
  # Its size too (Pillow's count: it refuses before the header's sides reach us).
  assert out.image is None and out.reason == "too large: 10000000000 pixels, more than 64000000"
  out = load_image(_write(tmp_path, "big.png", _png_header_only(9000, 9000)), OPTS)
  assert out.reason == "too large: 9000x9000 is more than 64000000 pixels (max_pixels)"
  # A data.max_pixels above Pillow's own limit (twice its MAX_IMAGE_PIXELS): Pillow refuses
  # first, and the reason names its limit, not data.max_pixels.
  pillow_limit = 2 * Image.MAX_IMAGE_PIXELS
  out = load_image(_write(tmp_path, "huge.png", _png_header_only(100_000, 100_000)),
                   LoadOptions(32, max_pixels=10 * pillow_limit))
  assert out.reason == (f"too large: 10000000000 pixels, more than {pillow_limit} (Pillow's "
                        "limit, below data.max_pixels)")


def test_pillows_size_warning_is_quiet_without_swapping_the_warning_filters(tmp_path,
                                                                            monkeypatch):
  """Past Pillow's MAX_IMAGE_PIXELS (below twice it) Pillow warns; the reason says it. It was
  silenced with catch_warnings, which swaps the process's whole filter list: loading threads
  (evaluate's) and another thread's catch_warnings then put back each other's lists, leaving
  filters behind (an 'error' one turned later warnings into exceptions)."""
  import warnings

  side = int((1.2 * Image.MAX_IMAGE_PIXELS) ** 0.5)
  path = _write(tmp_path, "bomb.png", _png_header_only(side, side))
  real_open, lists = Image.open, []

  def open_noting_the_filter_list(*args, **kwargs):
    lists.append(warnings.filters)
    return real_open(*args, **kwargs)

  monkeypatch.setattr(Image, "open", open_noting_the_filter_list)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    filters = warnings.filters
    out = load_image(path, OPTS)
    assert out.reason == f"too large: {side}x{side} is more than 64000000 pixels (max_pixels)"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert lists == [filters] and lists[0] is filters
    # A filter added since that would take the warning first ('error', a notebook's, say): it
    # raised out of the load, which never raises for its file.
    warnings.simplefilter("error")
    assert load_image(path, OPTS).reason == out.reason


def test_one_pixel_is_too_small(tmp_path):
  out = load_image(_write(tmp_path, "1.png", _encode(Image.new("RGB", (1, 1)), "PNG")), OPTS)
  assert out.reason == "too small: 1x1, a side under 8 (min_source_size)"


def test_very_wide_is_padded_to_a_square(tmp_path):
  img = Image.new("RGB", (400, 40), (20, 20, 20))
  out = load_image(_write(tmp_path, "wide.png", _encode(img, "PNG")), OPTS)
  assert out.image.shape == (32, 32, 3)
  np.testing.assert_array_equal(out.image[0, 16], [255, 255, 255])  # padding above
  np.testing.assert_array_equal(out.image[31, 16], [255, 255, 255])  # and below
  assert out.image[16, 16].max() < 40  # the product, centred


def test_a_thin_image_is_shrunk_before_its_square_is_padded(tmp_path, monkeypatch):
  """1000 x 40 passes a 40,000-pixel limit, but its padded square (1,000,000 pixels) would not:
  no canvas over the limit is made, and the product still comes out centred, as without it."""
  img = Image.new("RGB", (1000, 40), (20, 20, 20))
  path = _write(tmp_path, "banner.png", _encode(img, "PNG"))
  unlimited = load_image(path, OPTS).image
  canvases = []
  real_new = Image.new
  monkeypatch.setattr(Image, "new", lambda mode, size, *args, **kwargs: (
      canvases.append(size), real_new(mode, size, *args, **kwargs))[1])
  out = load_image(path, LoadOptions(32, min_source_size=8, max_pixels=40_000))
  assert canvases and max(w * h for w, h in canvases) <= 40_000
  assert out.image.shape == (32, 32, 3)
  np.testing.assert_array_equal(out.image[0, 16], [255, 255, 255])  # padding above
  assert out.image[15:17, 16].max() < 100  # the product (1.3 pixels tall), centred
  assert np.abs(out.image.astype(int) - unlimited).max() <= 8  # as the full-size square gives
  # At its native size the square would be the output itself: refused from the header.
  native = load_image(path, LoadOptions(0, min_source_size=8, max_pixels=40_000))
  assert native.reason == ("too large: 1000x40 padded to a square is more than 40000 pixels "
                           "(max_pixels)")


def test_exif_rotation_is_applied(tmp_path):
  img = Image.new("RGB", (40, 20), (255, 0, 0))
  img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  out = load_image(_write(tmp_path, "r.jpg", _encode(img, "JPEG", quality=95, exif=exif)), OPTS)
  top, bottom = out.image[6, 16], out.image[26, 16]
  assert top[0] > 200 and top[2] < 60  # red went to the top
  assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("fmt,ext", [("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_other_formats(tmp_path, fmt, ext):
  img = Image.new("RGB", (24, 24), (0, 128, 0))
  out = load_image(_write(tmp_path, f"i.{ext}", _encode(img, fmt)), OPTS)
  assert out.reason == "" and out.image.shape == (32, 32, 3)
  assert out.image[16, 16, 1] > 100 and out.image[16, 16, 0] < 40


def test_gif_takes_the_first_frame(tmp_path):
  frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
  out = load_image(_write(tmp_path, "anim.gif", buf.getvalue()), LoadOptions(16))
  assert out.image[8, 8, 0] > 200 and out.image[8, 8, 2] < 60


def test_grayscale_and_missing_file(tmp_path):
  out = load_image(_write(tmp_path, "g.png", _encode(Image.new("L", (20, 20), 77), "PNG")), OPTS)
  np.testing.assert_array_equal(out.image[5, 5], [77, 77, 77])
  assert load_image(str(tmp_path / "missing.jpg"), OPTS).reason.startswith("unreadable")


def test_image_path_filter():
  assert is_image_path("a/B/photo.JPG") and is_image_path("x.webp") and is_image_path("y.Png")
  assert not is_image_path("a/.hidden.jpg") and not is_image_path("notes.txt")


def test_storage_errors_are_transient_and_the_files_own_are_not(tmp_path, monkeypatch):
  import errno

  from jaxgan.data import images as images_lib

  path = _write(tmp_path, "a.png", _encode(Image.new("RGB", (20, 20)), "PNG"))
  for code, transient in ((errno.EIO, True), (errno.ESTALE, True), (errno.EACCES, False)):
    def failing_open(*args, code=code, **kwargs):
      raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(images_lib, "open", failing_open, raising=False)
    loaded = load_image(path, OPTS)
    assert loaded.image is None and loaded.reason == f"unreadable: {os.strerror(code)}"
    assert loaded.transient == transient


def _s15(value):
  return struct.pack(">i", int(round(value * 65536)))


def _xyz_tag(x, y, z):
  return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _rgb_profile(red, green, blue, gamma=2.2, name="test RGB"):
  """An ICC v2 matrix/TRC display profile: the colorants of R, G and B (D50 XYZ) and one gamma."""
  curve = _curve(gamma)
  return _profile(b"RGB ", name, [(b"rXYZ", _xyz_tag(*red)), (b"gXYZ", _xyz_tag(*green)),
                                  (b"bXYZ", _xyz_tag(*blue)), (b"rTRC", curve),
                                  (b"gTRC", curve), (b"bTRC", curve)])


def _grey_profile(gamma=1.0, name="test grey"):
  """An ICC v2 grey display profile of one gamma (1.0: linear light, not sRGB's curve)."""
  return _profile(b"GRAY", name, [(b"kTRC", _curve(gamma))])


def _curve(gamma):
  return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, int(round(gamma * 256))) + b"\0\0"


def _profile(colour_space, name, colour_tags):
  text = name.encode() + b"\0"
  desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78
  tags = [(b"desc", desc), (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)), *colour_tags,
          (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0")]
  offset = 128 + 4 + 12 * len(tags)
  table, data = b"", b""
  for sig, body in tags:
    body += b"\0" * (-len(body) % 4)
    table += sig + struct.pack(">II", offset + len(data), len(body))
    data += body
  header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + bytes([2, 0x10, 0, 0])
            + b"mntr" + colour_space + b"XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
            + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
  return header + struct.pack(">I", len(tags)) + table + data


# sRGB's colorants adapted to D50, as sRGB ICC profiles carry them.
SRGB_RED, SRGB_GREEN = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971)
SRGB_BLUE = (0.1431, 0.0606, 0.7141)


def test_an_embedded_colour_profile_is_converted_to_srgb(tmp_path):
  """A profile whose red channel holds sRGB's green primary: the file's pure red *is* green, as
  a colour-managed viewer shows it (an Adobe RGB or Display P3 photo differs the same way, less)."""
  swapped = _rgb_profile(SRGB_GREEN, SRGB_RED, SRGB_BLUE)
  jpeg = _encode(Image.new("RGB", (40, 40), (255, 0, 0)), "JPEG", quality=100, icc_profile=swapped)
  np.testing.assert_allclose(load_image(jpeg, OPTS).image[16, 16].astype(int), [0, 255, 0], atol=2)
  # Alpha survives the transform: transparent pixels still become the background.
  rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
  rgba.paste((0, 0, 0, 0), (0, 0, 40, 8))
  out = load_image(_encode(rgba, "PNG", icc_profile=swapped), OPTS).image
  np.testing.assert_array_equal(out[16, 16], [0, 255, 0])
  np.testing.assert_array_equal(out[1, 16], [255, 255, 255])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_survives_a_colour_profile(mode):
  """A PNG whose transparency is a colour key (tRNS), not an alpha channel, with a profile to
  convert: its keyed pixels are the background, as without the profile, not the key's black."""
  swapped = _rgb_profile(SRGB_GREEN, SRGB_RED, SRGB_BLUE)
  img = Image.new(mode, (32, 32), 0)
  img.paste(255 if mode == "L" else (255, 0, 0), (8, 8, 24, 24))
  key = 0 if mode == "L" else (0, 0, 0)
  profile = swapped if mode == "RGB" else _grey_profile()
  out = load_image(_encode(img, "PNG", transparency=key, icc_profile=profile), OPTS).image
  np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
  assert out[16, 16].max() > 200  # the square itself is not keyed out


def test_a_linear_srgb_profile_is_not_taken_for_srgb():
  """'Linear sRGB' (GIMP's built-in linear profile) names sRGB but encodes linear light: its
  mid grey 128 is sRGB's 188, not 128."""
  linear = _rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE, gamma=1.0,
                        name="GIMP built-in Linear sRGB")
  png = _encode(Image.new("RGB", (40, 40), (128, 128, 128)), "PNG", icc_profile=linear)
  np.testing.assert_allclose(load_image(png, OPTS).image[16, 16].astype(int), [188] * 3, atol=2)


@pytest.mark.parametrize("icc", ["srgb", "gimp", "garbage"])
def test_srgb_and_unreadable_profiles_load_as_untagged(icc):
  from PIL import ImageCms

  # "gimp": named as GIMP's sRGB, with a plain 2.2 gamma that a transform would show (40 -> 35).
  profile = {"srgb": lambda: ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
             "gimp": lambda: _rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE,
                                          name="GIMP built-in sRGB"),
             "garbage": lambda: b"not a profile at all"}[icc]()
  img = Image.new("RGB", (40, 40), (200, 120, 40))
  img.paste((10, 90, 250), (0, 0, 20, 40))
  plain = load_image(_encode(img, "PNG"), OPTS).image
  tagged = load_image(_encode(img, "PNG", icc_profile=profile), OPTS).image
  np.testing.assert_array_equal(tagged, plain)
