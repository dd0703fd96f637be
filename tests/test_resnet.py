"""ResNet (SNGAN/BigGAN) G and D, spectral norm, self-attention, orthogonal penalty, ClassEmbed."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.models.conditioning import ClassEmbed, as_label_matrix
from jaxgan.models.resnet import (ConditionalBatchNormReLU, ResNetDiscriminator, ResNetGenerator,
                                  channel_widths)

Z_DIM, WIDTH, B = 20, 4, 2


def _models(size, num_classes=(), attention=0, dtype=jnp.float32):
  g = ResNetGenerator(size, num_classes, z_dim=Z_DIM, width=WIDTH, max_width=32, shared_dim=8,
                      attention_resolution=attention, dtype=dtype)
  d = ResNetDiscriminator(size, num_classes, width=WIDTH, max_width=32,
                          attention_resolution=attention, dtype=dtype)
  return g, d


def _labels(num_classes):
  if not num_classes:
    return None
  cols = [jnp.arange(B, dtype=jnp.int32) % n for n in num_classes]
  return cols[0] if len(cols) == 1 else jnp.stack(cols, axis=1)


def _abstract_run(g, d, size, labels):
  """eval_shape of a train-mode init of both nets: (G vars, images, D vars, logits)."""
  def run():
    z = jnp.zeros((B, Z_DIM))
    images, gv = g.init_with_output(jax.random.PRNGKey(0), z, labels, train=True)
    logits, dv = d.init_with_output(jax.random.PRNGKey(1), images, labels, train=True)
    return gv, images, dv, logits
  return jax.eval_shape(run)


@pytest.mark.parametrize("num_classes", [(), (5,), (3, 4)], ids=["uncond", "cond", "multi"])
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes(size, num_classes):
  g, d = _models(size, num_classes)
  gv, images, dv, logits = _abstract_run(g, d, size, _labels(num_classes))
  assert images.shape == (B, size, size, 3) and images.dtype == jnp.float32
  assert logits.shape == (B,) and logits.dtype == jnp.float32
  n = int(np.log2(size // 4))
  assert [k for k in gv["params"] if k.startswith("up")] == [f"up{i}" for i in range(n)]
  assert [k for k in dv["params"] if k.startswith("down")] == [f"down{i}" for i in range(n)]
  # Hierarchical latents: the 4x4 projection reads the first of n + 1 chunks.
  first_chunk = Z_DIM // (n + 1) + (Z_DIM % (n + 1) > 0)
  assert gv["params"]["project"]["kernel"].shape[0] == first_chunk
  w = channel_widths(WIDTH, 32, size)
  assert gv["params"]["project"]["kernel"].shape[1] == 16 * w[n]
  assert dv["params"]["down0"]["conv1"]["kernel"].shape[-1] == w[0]
  for i, n_cls in enumerate(num_classes):
    assert gv["params"]["shared"][f"attr{i}"]["embedding"].shape == (n_cls, 8)
    assert dv["params"]["projection"][f"attr{i}"]["kernel"].shape == (n_cls, w[n - 1])
  if not num_classes:
    assert "shared" not in gv["params"] and "projection" not in dv["params"]


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  g, d = _models(32, (5,), dtype=jnp.bfloat16)
  gv, images, dv, logits = _abstract_run(g, d, 32, _labels((5,)))
  assert images.dtype == jnp.float32 and logits.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves((gv, dv)):
    assert leaf.dtype == jnp.float32


def test_channel_widths():
  assert channel_widths(64, 1024, 128) == [64, 128, 256, 512, 1024, 1024]  # BigGAN 128
  assert channel_widths(64, 256, 32) == [64, 128, 256, 256]


def _sn_state(stats):
  """The spectral-norm leaves (u, sigma) of a batch_stats tree, by path."""
  flat = jax.tree_util.tree_leaves_with_path(stats)
  return {jax.tree_util.keystr(p): v for p, v in flat if "/kernel/" in jax.tree_util.keystr(p)}


def _numpy_variables(abstract, seed):
  """Concrete variables shaped like `abstract`: N(0, 1/fan_in) weights, BN variances of 1, and
  a non-zero attention gamma so the attention path reaches the output."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name.endswith("['gamma']"):
      return jnp.full(leaf.shape, 0.5, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_real_apply_updates_spectral_norm_state_only_in_train_mode():
  labels = _labels((3, 4))
  g, d = _models(32, (3, 4), attention=16)
  z = jax.random.normal(jax.random.PRNGKey(0), (B, Z_DIM))
  # Variables from NumPy on init's abstract shapes: compiling Flax's init (one threefry derivation
  # per parameter) takes ~10 s per net on a 2-core CPU, running the nets themselves a fraction.
  x = jnp.zeros((B, 32, 32, 3))
  gv = _numpy_variables(jax.eval_shape(lambda: g.init(jax.random.PRNGKey(1), z, labels)), 1)
  dv = _numpy_variables(jax.eval_shape(lambda: d.init(jax.random.PRNGKey(2), x, labels)), 2)
  assert "attention" in gv["params"] and "attention" in dv["params"]

  # One jitted program: op-by-op dispatch of these small nets is far slower on the CPU.
  def run(gv, dv, train):
    images, g_upd = g.apply(gv, z, labels, train=train, mutable=["batch_stats"])
    logits, d_upd = d.apply(dv, images, labels, train=train, mutable=["batch_stats"])
    return images, logits, {**gv, **g_upd}, {**dv, **d_upd}

  run = jax.jit(run, static_argnums=2)
  images, logits, g_new, d_new = run(gv, dv, True)
  assert images.shape == (B, 32, 32, 3) and logits.shape == (B,)
  assert bool(jnp.all(jnp.abs(images) <= 1)) and bool(jnp.all(jnp.isfinite(logits)))
  for old, new in ((gv["batch_stats"], g_new["batch_stats"]),
                   (dv["batch_stats"], d_new["batch_stats"])):
    before, after = _sn_state(old), _sn_state(new)
    assert before and before.keys() == after.keys()
    assert any("attention" in k for k in before)
    # Every u moves after one power iteration from its random init.
    for k in before:
      if k.endswith("/u']"):
        assert not np.allclose(before[k], after[k]), k

  # G's conditional BatchNorm gains and biases are SN'd (BigGAN's bn_linear), D's class tables too.
  assert any("['gain_sn']" in k for k in _sn_state(gv["batch_stats"]))
  assert any("['bias_sn']" in k for k in _sn_state(gv["batch_stats"]))
  assert any("['projection']['attr1_sn']" in k for k in _sn_state(dv["batch_stats"]))
  _, _, g_eval, d_eval = run(g_new, d_new, False)
  for new, ev in ((g_new, g_eval), (d_new, d_eval)):
    for a, b in zip(jax.tree_util.tree_leaves(new["batch_stats"]),
                    jax.tree_util.tree_leaves(ev["batch_stats"])):
      np.testing.assert_array_equal(a, b)


def test_the_projection_embedding_is_spectrally_normalised():
  """Scaling D's class tables by 100 leaves the logits alone (BigGAN's SNEmbedding); a plain
  embedding would scale the class term by 100. Soft one-hot labels embed as the integers do."""
  from jaxgan.models.resnet import SNProjectionEmbed

  module = SNProjectionEmbed((3, 4))
  labels = jnp.array([[0, 1], [2, 3], [1, 0]], jnp.int32)
  variables = module.init(jax.random.PRNGKey(0), labels, 6, False)
  apply = jax.jit(lambda v, y: module.apply(v, y, 6, True, mutable=["batch_stats"])[0])
  base = apply(variables, labels)
  scaled = {**variables, "params": jax.tree_util.tree_map(lambda t: 100 * t, variables["params"])}
  np.testing.assert_allclose(apply(scaled, labels), base, rtol=1e-4)
  soft = jnp.concatenate([jax.nn.one_hot(labels[:, 0], 3), jax.nn.one_hot(labels[:, 1], 4)], -1)
  np.testing.assert_allclose(apply(variables, soft), base, rtol=1e-6)


def test_spectral_norm_converges_to_largest_singular_value():
  s = np.array([3.0, 1.5, 1.0, 0.5], np.float32)
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(6, 4)))
  v, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  kernel = (u * s) @ v.T  # [in=6, out=4] with singular values s
  layer = nn.SpectralNorm(nn.Dense(4, use_bias=False))
  x = jnp.eye(6)  # so the output is the normalised kernel itself
  variables = layer.init(jax.random.PRNGKey(0), x, update_stats=False)
  # Swap in the known kernel (the only parameter), wherever the wrapper put it.
  variables["params"] = jax.tree_util.tree_map(lambda _: jnp.asarray(kernel, jnp.float32),
                                               variables["params"])

  @jax.jit
  def step(stats):
    out, upd = layer.apply({"params": variables["params"], "batch_stats": stats}, x,
                           update_stats=True, mutable=["batch_stats"])
    return out, upd["batch_stats"]

  stats = variables["batch_stats"]
  for _ in range(30):
    normalised, stats = step(stats)
  (sigma,) = [float(v) for k, v in stats.items() if k.endswith("kernel/sigma")]
  assert abs(sigma - s.max()) / s.max() < 1e-3
  assert abs(np.linalg.norm(np.asarray(normalised), 2) - 1.0) < 1e-3


def test_self_attention_block():
  g, d = _models(32, (), attention=16)
  gv, images, dv, logits = _abstract_run(g, d, 32, None)
  assert images.shape == (B, 32, 32, 3) and logits.shape == (B,)
  for params in (gv["params"], dv["params"]):
    att = params["attention"]
    assert set(att) == {"theta", "phi", "g", "out", "gamma"} and att["gamma"].shape == ()
  # G's block at 16x16 is up1 (8 channels at width 4), D's is down0.
  assert gv["params"]["attention"]["g"]["kernel"].shape == (1, 1, 8, 4)
  assert dv["params"]["attention"]["theta"]["kernel"].shape == (1, 1, 4, 1)
  with pytest.raises(ValueError, match="attention_resolution"):
    _abstract_run(*_models(32, (), attention=12), 32, None)


def test_class_embed_sums_attributes():
  embed = ClassEmbed((3, 4), features=5)
  labels = jnp.array([[0, 1], [2, 3], [1, 0]], jnp.int32)
  params = embed.init(jax.random.PRNGKey(0), labels)["params"]
  out = embed.apply({"params": params}, labels)
  expected = (params["attr0"]["embedding"][labels[:, 0]]
              + params["attr1"]["embedding"][labels[:, 1]])
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  assert out.shape == (3, 5)

  single = ClassEmbed((3,), features=5)
  p1 = single.init(jax.random.PRNGKey(0), labels[:, 0])
  np.testing.assert_allclose(single.apply(p1, labels[:, 0]), single.apply(p1, labels[:, :1]))
  with pytest.raises(ValueError, match=r"labels of shape \(3,\) for 2 attributes"):
    embed.apply({"params": params}, labels[:, 0])  # [b] only with one attribute
  assert as_label_matrix(jnp.array([1, 2]), 1).shape == (2, 1)
  assert as_label_matrix(labels, 2).dtype == jnp.int32


@pytest.mark.parametrize("impl", ["flax", "fused"])
def test_bfloat16_conditional_gain_keeps_small_offsets(impl):
  """A class's gain of 1.003 is 1.0 in bfloat16 (steps of 2^-7 next to 1): it is formed and
  applied in float32, so only the output is rounded, and that rounding averages out."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 16))
  cond = jnp.full((4, 16), 0.003)  # with an all-ones kernel (sigma 16): a gain of 1.003
  outputs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    m = ConditionalBatchNormReLU(norm_impl=impl, dtype=dtype)
    v = m.init(jax.random.PRNGKey(1), x, cond, train=False)
    v["params"]["gain"]["kernel"] = jnp.ones((16, 16))
    v["params"]["bias"]["kernel"] = jnp.zeros((16, 16))
    for c in (cond, jnp.zeros_like(cond)):
      out, _ = m.apply(v, x, c, train=True, mutable=["batch_stats"])
      outputs[dtype, c is cond] = float(jnp.mean(out.astype(jnp.float32)))
  assert outputs[jnp.float32, True] / outputs[jnp.float32, False] == pytest.approx(1.003, abs=1e-4)
  assert outputs[jnp.bfloat16, True] / outputs[jnp.float32, True] == pytest.approx(1.0, abs=5e-4)


def test_bfloat16_generator_conditions_its_blocks_in_float32():
  """The blocks' conditioning (z chunk + shared class embedding) feeds only the float32 gains and
  biases: a bfloat16 G computes them as the float32 G does (it rounded that input to bfloat16,
  a relative error of up to 2^-9 in every gain's offset)."""
  g32, _ = _models(16, (5,))
  g16, _ = _models(16, (5,), dtype=jnp.bfloat16)
  z = jax.random.normal(jax.random.PRNGKey(3), (B, Z_DIM))
  labels = _labels((5,))
  variables = g32.init(jax.random.PRNGKey(0), z, labels, train=False)
  gains = {}
  for g in (g32, g16):
    _, found = g.apply(variables, z, labels, train=False, capture_intermediates=True,
                       mutable=["intermediates"])
    flat = flax.traverse_util.flatten_dict(found["intermediates"])  # (..., name, '__call__')
    gains[g.dtype] = [v[0] for path, v in sorted(flat.items())
                      if path[-2:] in (("gain_sn", "__call__"), ("bias_sn", "__call__"))]
  assert len(gains[jnp.float32]) == 8  # 16x16: 2 up blocks x 2 BatchNorms x (gain, bias)
  for a, b in zip(gains[jnp.float32], gains[jnp.bfloat16]):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shortcuts_on_the_small_image_compute_biggans_blocks():
  """The 1x1 shortcuts convolve before upsampling (G) and pool before convolving (D, every
  block): the blocks are BigGAN's, whose shortcuts do it the other way round, to float rounding."""
  from jaxgan.models import resnet

  class BigGANUp(resnet.UpBlock):  # the shortcut upsamples, then convolves
    @nn.compact
    def __call__(self, x, cond, train):
      conv = lambda y, k, name: resnet._sn_conv(y, self.features, k, train=train, name=name,
                                                dtype=jnp.float32)
      h = resnet.ConditionalBatchNormReLU(norm_impl=self.norm_impl, name="bn1")(x, cond, train)
      h = conv(resnet._upsample(h), 3, "conv1")
      h = conv(resnet.ConditionalBatchNormReLU(norm_impl=self.norm_impl, name="bn2")(
          h, cond, train), 3, "conv2")
      return h + conv(resnet._upsample(x), 1, "shortcut")

  class BigGANDown(resnet.DownBlock):  # pre-activation blocks convolve, then pool
    @nn.compact
    def __call__(self, x, train):
      conv = lambda y, k, name: resnet._sn_conv(y, self.features, k, train=train, name=name,
                                                dtype=jnp.float32)
      h = conv(nn.relu(conv(nn.relu(x), 3, "conv1")), 3, "conv2")
      return resnet._avg_pool(h) + resnet._avg_pool(conv(x, 1, "shortcut"))

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 6))
  cond = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
  up = resnet.UpBlock(4)
  variables = up.init(jax.random.PRNGKey(2), x, cond, train=False)
  np.testing.assert_allclose(up.apply(variables, x, cond, train=False),
                             BigGANUp(4).apply(variables, x, cond, train=False), atol=1e-5)
  down = resnet.DownBlock(12)
  variables = down.init(jax.random.PRNGKey(3), x, train=False)
  np.testing.assert_allclose(down.apply(variables, x, train=False),
                             BigGANDown(12).apply(variables, x, train=False), atol=1e-5)
