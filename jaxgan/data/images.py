"""The one image loader: any catalog photo -> square RGB uint8 at the training size, or a reason.

Used by `jaxgan.prepare` and by the on-the-fly sources (folder, manifest, tfds), so every path
converts images the same way:

1. open lazily and check the header: not an image / empty / more than `max_pixels` pixels / a side
   shorter than `min_source_size` are rejected *before* decoding (no out-of-memory on a bomb);
2. first frame of animations (GIF, WebP); EXIF orientation applied;
3. colour: an embedded ICC profile other than sRGB (Adobe RGB, Display P3, a CMYK press profile)
   is converted to sRGB; grayscale, palette, CMYK and 16-bit (scaled, not clipped) become 8-bit
   RGB; transparency is composited onto the background colour (white by default, never black);
4. aspect ratio kept by padding to a square with the background colour, centred (an image whose
   square would have more than `max_pixels` pixels, a banner or a damaged header's 48 x 43048,
   is first shrunk by an integer box factor so that it does not);
5. resized with PIL's Lanczos filter (antialiased: it widens its support when downscaling) on the
   8-bit sRGB values.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import math
import os
import re
import warnings
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; a catalog photo is far smaller
RESAMPLE = Image.Resampling.LANCZOS


# The largest side the tools load images at (prepare --image-size, evaluate's, the input
# benchmark's): 8x StyleGAN's 1024. One image at a typo's 100000 would take 28 GiB.
MAX_IMAGE_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class LoadOptions:
  image_size: int
  background: tuple[int, int, int] = (255, 255, 255)
  min_source_size: int = 8
  max_pixels: int = DEFAULT_MAX_PIXELS


# Bump when load_image's output for the same file changes: decoded-image caches are keyed by it,
# so a loader fix is never served the old pixels.
# 4: a dark 16-bit PNG opened as mode I is 16-bit; 5: ICC profiles; 6: a thin image is shrunk
# before its square is padded; 7: a colour key survives an ICC profile's transform.
LOADER_VERSION = 7


@dataclasses.dataclass(frozen=True)
class Loaded:
  """An image (uint8 [size, size, 3]) or, when rejected, None and the reason; `transient` when
  the failure may be the storage's and pass (a retry, or the next run, may read the file);
  `upscaled` when its image was enlarged to the size asked for."""

  image: Optional[np.ndarray]
  reason: str = ""
  transient: bool = False
  upscaled: bool = False  # smaller than image_size on its long side: interpolated, not detail


# Read errors of the storage, not of the file: a network file system's hiccup, a stale handle,
# too many open files. Permission denied or a missing file are the file's, and stay.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN,
                              errno.ENOTCONN, errno.EMFILE, errno.ENFILE, errno.EINTR})


def _unreadable(error: OSError) -> Loaded:
  return Loaded(None, f"unreadable: {error.strerror or error}",
                transient=error.errno in TRANSIENT_ERRNOS)


def _to_rgb(img: Image.Image, background: tuple[int, int, int], source_format: str = ""
            ) -> Image.Image:
  """8-bit RGB, with transparency composited onto `background`; `source_format` is the file's
  format as PIL identified it (EXIF rotation returns a copy that no longer says)."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16/32-bit grayscale: scale the full range to 8 bits (PIL's convert would clip at 255).
    # A PNG has no 32-bit grayscale, so its "I" (Pillow 10 opens 16-bit PNGs so) is 16-bit
    # even when its values are all small: a dark 16-bit image must not read as a bright 8-bit one.
    arr = np.asarray(img, dtype=np.float64)
    sixteen = img.mode.startswith("I;16") or source_format == "PNG"
    top = 65535.0 if sixteen or arr.max() > 255 else 255.0
    key = img.info.get("transparency")  # a PNG tRNS colour key, in the original 16-bit values
    img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if isinstance(key, int):  # rebuilt from the array: the key would be lost (or mean 8-bit)
      img = Image.merge("LA", (img, Image.fromarray(np.where(arr == key, 0, 255).astype(np.uint8),
                                                     "L")))
  elif img.mode == "F":
    arr = np.asarray(img, dtype=np.float64)
    scale = 255.0 if arr.max() <= 1.0 else 1.0
    img = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L")
  # "transparency" in info: a palette entry (P) or a colour key (RGB/L PNG tRNS); convert("RGBA")
  # turns either into alpha 0, which must become the background, not the key's colour.
  has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
  if has_alpha:
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")
  return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, RGB


# Modes a profile transform takes (alpha is set aside and put back: LittleCMS does not carry
# it), with the mode of their colour channels; palette images go through RGB(A) first.
_PROFILE_MODES = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK", "L": "L", "LA": "L"}


def _to_srgb(img: Image.Image) -> Image.Image:
  """The image in sRGB when it embeds an ICC profile that is not sRGB: without the conversion an
  Adobe RGB or Display P3 photo loads desaturated and a CMYK one in a naive inversion's colours.
  Images without a profile, with an sRGB one, or with one LittleCMS cannot read (then converted
  as if untagged) are returned as they are."""
  icc = img.info.get("icc_profile")
  if not icc:
    return img
  if img.mode in ("P", "PA"):
    img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
  elif img.mode in ("L", "RGB") and "transparency" in img.info:
    # A colour key (PNG tRNS) lives in `info`, which the transform's output lacks: made alpha
    # first, or the key's pixels would load in its colour (black, often) instead of white.
    img = img.convert("LA" if img.mode == "L" else "RGBA")
  if img.mode not in _PROFILE_MODES:  # 16-bit grey, float, YCbCr, LAB: rare with a profile,
    return img  # and their own scaling (_to_rgb) must not be lost to an 8-bit conversion
  transform = _to_srgb_transform(icc, _PROFILE_MODES[img.mode])
  if transform is None:
    return img
  alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
  base = img.convert(_PROFILE_MODES[img.mode]) if alpha is not None else img
  try:
    out = ImageCms.applyTransform(base, transform)
  except (ImageCms.PyCMSError, OSError, ValueError):
    return img
  if alpha is not None:
    out.putalpha(alpha)
  return out


# Descriptions of the sRGB profiles cameras and editors embed (lower case): the untagged default
# already, so no transform (nor its rounding). Matched exactly: "Linear sRGB" and other
# variants of the name are other colour spaces.
SRGB_DESCRIPTIONS = frozenset({"srgb iec61966-2.1", "srgb iec61966-2-1 black scaled",
                               "srgb iec61966-2-1 no black scaling", "srgb built-in", "srgb",
                               "gimp built-in srgb", "srgb2014", "c2",
                               "srgb v4 icc preference perceptual intent beta"})


@functools.lru_cache(maxsize=16)  # a catalog's photos share a few profiles; building one costs ms
def _to_srgb_transform(icc: bytes, mode: str) -> Optional["ImageCms.ImageCmsTransform"]:
  """The transform from profile `icc` on `mode` pixels to sRGB; None for an sRGB profile, or one
  LittleCMS cannot read or use on `mode` (a CMYK profile on an RGB image): loaded as untagged."""
  try:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if ImageCms.getProfileDescription(profile).strip().lower() in SRGB_DESCRIPTIONS:
      return None
    return ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode, "RGB",
                                   renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
  except (ImageCms.PyCMSError, OSError, ValueError):
    return None


def _square(img: Image.Image, background: tuple[int, int, int], max_pixels: int) -> Image.Image:
  w, h = img.size
  if w == h:
    return img
  side = max(w, h)
  if side * side > max_pixels:
    # The header check bounds w x h, but the square grows with the long side squared: a 48 x
    # 43048 image (a damaged header says so) would need a 5.6 GB canvas, and the run would die
    # of it instead of counting a bad file. Shrink first by a whole factor (a box filter: exact
    # block means, cheap), so the canvas stays within the pixel limit; only such images take
    # this path (at native size they are refused, size_problem).
    img = img.reduce(-(-side // math.isqrt(max_pixels)))
    w, h = img.size
    side = max(w, h)
  canvas = Image.new("RGB", (side, side), background)
  canvas.paste(img, ((side - w) // 2, (side - h) // 2))
  return canvas


def convert(img: Image.Image, options: LoadOptions) -> np.ndarray:
  """Steps 2-5 on an opened (header-checked) image."""
  if getattr(img, "n_frames", 1) > 1:
    img.seek(0)
  source_format = img.format or ""
  img = _to_srgb(ImageOps.exif_transpose(img))
  img = _square(_to_rgb(img, options.background, source_format), options.background,
                options.max_pixels)
  if options.image_size and img.size[0] != options.image_size:  # 0: keep the native size
    img = img.resize((options.image_size, options.image_size), RESAMPLE)
  return np.asarray(img, dtype=np.uint8)


def size_problem(width: int, height: int, options: LoadOptions) -> str:
  """Why an image of this size is refused before decoding, or ''."""
  if width * height > options.max_pixels:
    return f"too large: {width}x{height} is more than {options.max_pixels} pixels (max_pixels)"
  side = max(width, height)
  if not options.image_size and side * side > options.max_pixels:  # kept at its native size
    return (f"too large: {width}x{height} padded to a square is more than {options.max_pixels} "
            "pixels (max_pixels)")
  if min(width, height) < options.min_source_size:
    # The limits' bare names: data.* keys in training, flags in `prepare` (--min-source-size),
    # fixed in `evaluate --real/--fake`; the reason is logged, and kept in a prepared set.
    return (f"too small: {width}x{height}, a side under {options.min_source_size} "
            "(min_source_size)")
  return ""


def _quiet_pillow_size_warning() -> None:
  """Pillow's DecompressionBombWarning ignored in this process from its first load on: the
  size checks here say it in their own words (`size_problem`; 'too large' past Pillow's own
  limit). One filter added, not `catch_warnings` around each open, which swaps the whole filter
  list: threads loading at once (evaluate's folders), or another thread's catch_warnings, put
  back each other's lists, leaving filters behind (another's 'error' one among them). Put
  first again where a filter added since would take the warning first (an 'error' one raised
  it out of a load, which never raises for its file): each change resets every module's record
  of the warnings it showed, so not at every call."""
  bomb = Image.DecompressionBombWarning
  first = next((f for f in warnings.filters if issubclass(bomb, f[2])), None)
  if first != ("ignore", None, bomb, None, 0):
    warnings.simplefilter("ignore", bomb)


def load_image(source: Union[str, bytes], options: LoadOptions) -> Loaded:
  """Loads a file path or encoded bytes; never raises for bad input, returns the reason."""
  try:
    if isinstance(source, str):
      if os.path.getsize(source) == 0:
        return Loaded(None, "empty file")
      handle = open(source, "rb")
    else:
      if not source:
        return Loaded(None, "empty file")
      handle = io.BytesIO(source)
  except OSError as e:
    if e.errno == errno.ENOENT and isinstance(source, str) and os.path.islink(source):
      # The file it ends at (through a chain of links), not 'No such file' beside a path that
      # exists.
      return Loaded(None, f"a broken link (to {os.path.realpath(source)}, missing)")
    return _unreadable(e)
  with handle:
    try:
      _quiet_pillow_size_warning()
      img = Image.open(handle)
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked before ours
      limit = min(options.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0) or options.max_pixels)
      # Its size, as Pillow's message gives it ('Image size (400000000 pixels) exceeds ...').
      size = re.search(r"\((\d+) pixels\)", str(e))
      return Loaded(None, "too large: " + (f"{size.group(1)} pixels, " if size else "")
                    + f"more than {limit}" + (" pixels" if not size else "")
                    + (" (Pillow's limit, below data.max_pixels)" if limit < options.max_pixels
                       else ""))
    except (UnidentifiedImageError, ValueError):
      return Loaded(None, "not an image")
    except OSError as e:
      if e.errno is None:  # Pillow's own, of the bytes ('Truncated File Read' in a header)
        return Loaded(None, f"truncated or corrupt: {e}")
      return _unreadable(e) if e.errno in TRANSIENT_ERRNOS else Loaded(None, f"unreadable: {e}")
    with img:
      problem = size_problem(*img.size, options)
      if problem:
        return Loaded(None, problem)
      try:
        img.load()
        upscaled = 0 < max(img.size) < options.image_size  # the long side: the square's
        return Loaded(convert(img, options), upscaled=upscaled)
      except MemoryError:
        raise  # the host, not the file: a multi-day run must not skip its way through the data
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:  # the storage, mid-read
          return _unreadable(e)
        # PIL's plugins raise more than OSError on damaged data (a truncated animated GIF raises
        # IndexError from n_frames): any failure here is this file's, skipped and counted.
        return Loaded(None, f"truncated or corrupt: {type(e).__name__}: {e}")
