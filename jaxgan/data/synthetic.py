"""The built-in synthetic catalog: procedurally drawn product photos on a white background.

Every example is a pure function of (seed, example index): the batch for step s is the same on
every machine and after every restart, so the main job and the tests need no download and resume
sees exactly the data an uninterrupted run would. Drawing is done with PIL at 2x and box-reduced,
which antialiases edges; a 64-image batch at 64x64 takes a few milliseconds on one core.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from jaxgan.config.schema import ConfigError
from jaxgan.data.arrays import check_rows

Points = list[tuple[float, float]]
# A drawer gets (draw, transform, rng, colour) and paints one product in canonical coordinates
# [-1, 1]^2 (y down); `transform` maps those to pixels.
Drawer = Callable[[ImageDraw.ImageDraw, Callable[[Points], Points], np.random.Generator,
                   tuple[int, int, int], float], None]


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0,
             stop: float = 2 * math.pi, n: int = 28) -> Points:
  return [(cx + rx * math.cos(t), cy + ry * math.sin(t))
          for t in np.linspace(start, stop, n)]


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
  return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)  # type: ignore[return-value]


def _tshirt(d, tf, rng, colour, px):
  sleeve = rng.uniform(0.25, 0.45)
  body = [(-0.38, -0.8), (-0.14, -0.8), (0.0, -0.66), (0.14, -0.8), (0.38, -0.8),
          (0.92, -0.45), (0.92 - sleeve, -0.45 + sleeve + 0.1), (0.46, -0.3), (0.46, 0.85),
          (-0.46, 0.85), (-0.46, -0.3), (-0.92 + sleeve, -0.45 + sleeve + 0.1), (-0.92, -0.45)]
  d.polygon(tf(body), fill=colour, outline=_shade(colour, 0.7), width=max(1, int(px)))
  d.line(tf([(-0.14, -0.8), (0.0, -0.66), (0.14, -0.8)]), fill=_shade(colour, 0.6),
         width=max(1, int(2 * px)))


def _trousers(d, tf, rng, colour, px):
  flare = rng.uniform(0.0, 0.15)
  legs = [(-0.42, -0.9), (0.42, -0.9), (0.5 + flare, 0.92), (0.12, 0.92), (0.0, -0.3),
          (-0.12, 0.92), (-0.5 - flare, 0.92)]
  d.polygon(tf(legs), fill=colour, outline=_shade(colour, 0.7), width=max(1, int(px)))
  d.polygon(tf([(-0.42, -0.9), (0.42, -0.9), (0.43, -0.78), (-0.43, -0.78)]),
            fill=_shade(colour, 0.75))


def _dress(d, tf, rng, colour, px):
  hem = rng.uniform(0.55, 0.85)
  shape = [(-0.22, -0.92), (-0.14, -0.92), (-0.1, -0.55), (0.1, -0.55), (0.14, -0.92),
           (0.22, -0.92), (0.3, -0.35), (0.18, -0.12), (hem, 0.9), (-hem, 0.9), (-0.18, -0.12),
           (-0.3, -0.35)]
  d.polygon(tf(shape), fill=colour, outline=_shade(colour, 0.7), width=max(1, int(px)))
  d.line(tf([(-0.19, -0.14), (0.19, -0.14)]), fill=_shade(colour, 0.6), width=max(1, int(2 * px)))


def _sneaker(d, tf, rng, colour, px):
  sole = (245, 245, 245) if rng.random() < 0.6 else (40, 40, 40)
  upper = [(-0.9, 0.3), (-0.86, -0.12), (-0.3, -0.2), (0.05, -0.48), (0.38, -0.45),
           (0.5, -0.08), (0.92, 0.12), (0.92, 0.32)]
  d.polygon(tf(upper), fill=colour, outline=_shade(colour, 0.65), width=max(1, int(px)))
  d.polygon(tf([(-0.94, 0.28), (0.94, 0.28), (0.92, 0.5), (-0.9, 0.5)]), fill=sole,
            outline=(120, 120, 120), width=max(1, int(px)))
  for i in range(3):
    x = -0.18 + 0.14 * i
    d.line(tf([(x, -0.28 - 0.05 * i), (x + 0.12, -0.12 - 0.05 * i)]), fill=(250, 250, 250),
           width=max(1, int(1.5 * px)))


def _handbag(d, tf, rng, colour, px):
  hh = rng.uniform(0.35, 0.55)
  d.polygon(tf(_ellipse(0.0, -0.2, 0.42, hh)), fill=_shade(colour, 0.6))
  d.polygon(tf(_ellipse(0.0, -0.2, 0.32, hh - 0.1)), fill=(255, 255, 255))
  d.polygon(tf([(-0.72, -0.2), (0.72, -0.2), (0.82, 0.82), (-0.82, 0.82)]), fill=colour,
            outline=_shade(colour, 0.65), width=max(1, int(px)))
  d.polygon(tf([(-0.72, -0.2), (0.72, -0.2), (0.6, 0.2), (-0.6, 0.2)]), fill=_shade(colour, 0.8))
  d.polygon(tf(_ellipse(0.0, 0.2, 0.06, 0.06, n=10)), fill=(212, 175, 55))


def _watch(d, tf, rng, colour, px):
  face = (250, 250, 250) if rng.random() < 0.5 else (25, 25, 35)
  metal = (192, 192, 192) if rng.random() < 0.5 else (212, 175, 55)
  d.polygon(tf([(-0.24, -0.95), (0.24, -0.95), (0.24, 0.95), (-0.24, 0.95)]), fill=colour,
            outline=_shade(colour, 0.6), width=max(1, int(px)))
  d.polygon(tf(_ellipse(0.0, 0.0, 0.52, 0.52)), fill=metal)
  d.polygon(tf(_ellipse(0.0, 0.0, 0.43, 0.43)), fill=face)
  hand = (200, 30, 30) if face[0] > 128 else (240, 240, 240)
  a = rng.uniform(0, 2 * math.pi)
  d.line(tf([(0.0, 0.0), (0.3 * math.cos(a), 0.3 * math.sin(a))]), fill=hand,
         width=max(1, int(1.5 * px)))
  d.line(tf([(0.0, 0.0), (0.0, -0.36)]), fill=hand, width=max(1, int(1.5 * px)))


def _cap(d, tf, rng, colour, px):
  d.polygon(tf(_ellipse(-0.1, 0.25, 0.62, 0.7, math.pi, 2 * math.pi)), fill=colour,
            outline=_shade(colour, 0.65), width=max(1, int(px)))
  d.polygon(tf([(0.3, 0.12), (0.98, 0.28), (0.95, 0.4), (0.3, 0.3)]), fill=_shade(colour, 0.75))
  d.polygon(tf([(-0.72, 0.18), (0.52, 0.18), (0.52, 0.3), (-0.72, 0.3)]), fill=_shade(colour, 0.85))
  d.polygon(tf(_ellipse(-0.1, -0.45, 0.07, 0.05, n=10)), fill=_shade(colour, 0.6))


def _sunglasses(d, tf, rng, colour, px):
  tint = (int(rng.integers(10, 80)), int(rng.integers(10, 80)), int(rng.integers(10, 90)))
  w = max(1, int(2 * px))
  for cx in (-0.45, 0.45):
    d.polygon(tf(_ellipse(cx, 0.1, 0.4, 0.3)), fill=colour)
    d.polygon(tf(_ellipse(cx, 0.1, 0.32, 0.23)), fill=tint)
  d.line(tf([(-0.1, 0.0), (0.0, -0.08), (0.1, 0.0)]), fill=colour, width=w)
  d.line(tf([(-0.84, 0.0), (-0.98, -0.1)]), fill=colour, width=w)
  d.line(tf([(0.84, 0.0), (0.98, -0.1)]), fill=colour, width=w)


CATEGORIES: dict[str, Drawer] = {
    "tshirt": _tshirt, "trousers": _trousers, "dress": _dress, "sneaker": _sneaker,
    "handbag": _handbag, "watch": _watch, "cap": _cap, "sunglasses": _sunglasses,
}
CATEGORY_NAMES: list[str] = list(CATEGORIES)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
  """A product colour that stays visible on white: capped brightness, varied hue and saturation."""
  hue = rng.uniform(0, 1)
  sat = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.4, 1.0)], p=[0.2, 0.8])
  val = rng.uniform(0.15, 0.85)
  i = int(hue * 6) % 6
  f = hue * 6 - int(hue * 6)
  p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
  rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
  return tuple(int(255 * c) for c in rgb)  # type: ignore[return-value]


def draw_product(category: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
  """One product photo as uint8 [image_size, image_size, 3]."""
  scale = 2  # supersampling factor; the box reduce below antialiases the edges
  size = image_size * scale
  img = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  extent = rng.uniform(0.62, 0.86) * size / 2
  sx, sy = extent * rng.uniform(0.9, 1.1), extent * rng.uniform(0.9, 1.1)
  if rng.random() < 0.5:  # mirror pose: shoes and caps face either way
    sx = -sx
  theta = math.radians(rng.uniform(-10, 10))
  cx = size / 2 + rng.uniform(-0.08, 0.08) * size
  cy = size / 2 + rng.uniform(-0.08, 0.08) * size
  cos_t, sin_t = math.cos(theta), math.sin(theta)

  def transform(points: Points) -> Points:
    return [(cx + cos_t * x * sx - sin_t * y * sy, cy + sin_t * x * sx + cos_t * y * sy)
            for x, y in points]

  CATEGORIES[CATEGORY_NAMES[category]](draw, transform, rng, _random_colour(rng), size / 64)
  return np.asarray(img.reduce(scale))


class SyntheticCatalog:
  """Infinite, deterministic stream of labelled synthetic product images."""

  reads: frozenset = frozenset()  # none of a real data set's keys (config validation)
  folder_key = None  # no folder read
  # A real data set's key set: the run would silently train on drawings.
  unread_hint = ("which reads no files; set --config.data.source (prepared, folder, manifest or "
                 "tfds) or drop data.{key}")

  def __init__(self, image_size: int, num_classes: int, seed: int):
    self.image_size = image_size
    self.num_classes = num_classes
    self.seed = seed
    self.class_names = CATEGORY_NAMES[:num_classes] if num_classes else []
    self.attribute_names = [("category", list(self.class_names))] if num_classes else []

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "SyntheticCatalog":
    return cls(config.data.image_size, config.data.num_classes, config.seed)

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:

    del reads_data  # it draws its images: no files
    if not 16 <= config.data.image_size <= 256:
      raise ConfigError(f"config key data.image_size: the synthetic catalog draws 16..256 pixels, "
                        f"got {config.data.image_size}")
    if config.data.num_classes > len(CATEGORY_NAMES):
      raise ConfigError(f"config key data.num_classes: the synthetic catalog has "
                        f"{len(CATEGORY_NAMES)} categories, got {config.data.num_classes}")

  def example(self, index: int) -> tuple[np.ndarray, int]:
    """Example `index` of the stream: (uint8 HWC image, label)."""
    rng = np.random.default_rng([self.seed, index])
    n = self.num_classes or len(CATEGORY_NAMES)
    category = int(rng.integers(n))
    label = category if self.num_classes else 0
    return draw_product(category, self.image_size, rng), label

  def batches(self, batch_size: int, start_step: int, rows: Optional[np.ndarray] = None
              ) -> Iterator[dict[str, np.ndarray]]:
    """`rows` (all by default) of every global batch of `batch_size`, from `start_step` on.

    Row r of step s is example s * batch_size + r, so any process layout sees the same data.
    """
    rows = check_rows(rows, batch_size)
    step = start_step
    while True:
      pairs = [self.example(step * batch_size + int(r)) for r in rows]
      yield {"image": np.stack([p[0] for p in pairs]),
             "label": np.asarray([p[1] for p in pairs], np.int32)}
      step += 1
