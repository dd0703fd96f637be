"""DCGAN shapes for every supported size, conditional and not, in both compute dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models
from jaxgan.models.dcgan import Discriminator, Generator
from tests.conftest import jaxpr_equations


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_shapes(size, num_classes):
  g = Generator(image_size=size, num_classes=num_classes, z_dim=16, width=8, embed_dim=4)
  d = Discriminator(image_size=size, num_classes=num_classes, width=8)
  z = jnp.zeros((3, 16))
  labels = jnp.zeros((3,), jnp.int32) if num_classes else None
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=False))
  images = jax.eval_shape(lambda v: g.apply(v, z, labels, train=False), g_vars)
  assert images.shape == (3, size, size, 3) and images.dtype == jnp.float32
  d_vars = jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(0), x, labels, train=False), images)
  logits = jax.eval_shape(lambda v, x: d.apply(v, x, labels, train=False), d_vars, images)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  assert ("class_embed" in g_vars["params"]) == bool(num_classes)
  assert ("class_projection" in d_vars["params"]) == bool(num_classes)


def test_dcgan64_widths_follow_the_paper():
  g = Generator(image_size=64, z_dim=100, width=64)
  v = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((1, 100)), train=False))
  assert v["params"]["project"]["kernel"].shape == (100, 4 * 4 * 512)
  assert [v["params"][f"up{i}"]["kernel"].shape[-1] for i in range(3)] == [256, 128, 64]


def test_bfloat16_compute_keeps_float32_params_and_outputs(make_config):
  config = make_config(**{"train.dtype": "bfloat16"})
  g, d = models.build_models(config)
  z, labels = jnp.ones((2, 8)), jnp.array([0, 2])
  g_vars = jax.jit(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=False))()
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(g_vars["params"]))
  images = jax.jit(lambda v: g.apply(v, z, labels, train=False))(g_vars)
  assert images.dtype == jnp.float32 and bool(jnp.all(jnp.abs(images) <= 1.0))
  d_vars = jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(1), x, labels, train=False), images)
  logits = jax.eval_shape(lambda v, x: d.apply(v, x, labels, train=False), d_vars, images)
  assert logits.dtype == jnp.float32


def test_conditioning_changes_the_output():
  g = Generator(image_size=16, num_classes=4, z_dim=8, width=8, embed_dim=4)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8))
  v = g.init(jax.random.PRNGKey(1), z, jnp.array([0, 0]), train=False)
  a = g.apply(v, z, jnp.array([0, 0]), train=False)
  b = g.apply(v, z, jnp.array([1, 3]), train=False)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-7  # exactly 0 if the labels were ignored


def test_the_discriminator_scores_the_label_by_projection():
  """D(x, y) = head(x) + embed(y) . features(x) (Miyato & Koyama's projection): the label moves
  every score, and its term is linear in the label's embedding row (a zero row adds nothing; a
  row twice another adds twice its term). A D that ignored its labels failed."""
  d = Discriminator(image_size=16, num_classes=3, width=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  v = d.init(jax.random.PRNGKey(1), x, jnp.zeros((4,), jnp.int32), train=False)
  table = np.array(v["params"]["class_projection"]["embedding"])
  table[0], table[1] = 0.0, 2.0 * table[2]
  v["params"]["class_projection"]["embedding"] = jnp.asarray(table)

  def score(label):
    return d.apply(v, x, jnp.full((4,), label, jnp.int32), train=False)

  s0, s1, s2 = score(0), score(1), score(2)
  assert float(jnp.min(jnp.abs(s2 - s0))) > 1e-4  # the label changes every sample's score
  np.testing.assert_allclose(s1 - s0, 2.0 * (s2 - s0), rtol=1e-4, atol=1e-6)


def test_dcgan_layer_norm_normalises_each_sample_over_its_whole_feature_map():
  """WGAN-GP's layer norm (improved_wgan_training: moments over C, H, W per sample): a location
  that responds more strongly keeps standing out after it."""
  d = Discriminator(image_size=16, width=4, norm="layer")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  x = x.at[:, :4, :4].multiply(20.0)  # one corner of each image much stronger
  variables = d.init(jax.random.PRNGKey(1), x, train=True)
  assert variables["params"]["down1_ln"]["scale"].shape == (8,)  # per channel
  _, inter = d.apply(variables, x, train=True, capture_intermediates=True)
  h = np.asarray(inter["intermediates"]["down1_ln"]["__call__"][0])  # [2, 4, 4, 8], scale 1
  np.testing.assert_allclose(h.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(h.var(axis=(1, 2, 3)), 1.0, rtol=1e-2)  # eps: small variances
  per_pixel = h.var(axis=-1)  # over channels alone it would be 1 at every location
  assert per_pixel[:, 0, 0].min() > 5 * per_pixel[:, 2:, 2:].max()


def test_registry_rejects_unknown_model():
  with pytest.raises(KeyError, match="dcgan"):
    models.MODELS.get("stylegan9", "model.name")


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_two_attribute_labels(make_config, family):
  """Labels [b, 2] (e.g. articleType and baseColour): one embedding per attribute in G and D."""
  size = 16 if family == "dcgan" else 32
  config = make_config(**{"model.name": family, "data.image_size": size, "data.num_classes": 3,
                          "data.extra_num_classes": "5", "model.shared_dim": 8})
  g, d = models.build_models(config)
  z, labels = jnp.zeros((2, 8)), jnp.array([[0, 4], [2, 1]], jnp.int32)
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=False))
  images = jax.eval_shape(lambda v: g.apply(v, z, labels, train=False), g_vars)
  assert images.shape == (2, size, size, 3)
  d_vars = jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(1), x, labels, train=False), images)
  logits = jax.eval_shape(lambda v, x: d.apply(v, x, labels, train=False), d_vars, images)
  assert logits.shape == (2,) and logits.dtype == jnp.float32
  g_embed, d_embed = (("class_embed", "class_projection") if family == "dcgan"
                      else ("shared", "projection"))
  assert [g_vars["params"][g_embed][f"attr{i}"]["embedding"].shape[0] for i in range(2)] == [3, 5]
  table = "embedding" if family == "dcgan" else "kernel"  # ResNet's: SN'd dense on one-hot labels
  assert [d_vars["params"][d_embed][f"attr{i}"][table].shape[0] for i in range(2)] == [3, 5]
  with pytest.raises(ValueError, match=r"expected \[batch, 2\]"):
    jax.eval_shape(lambda v: g.apply(v, z, labels[:, :1], train=False), g_vars)
  # Soft labels (class weights) of the wrong width, to D: refused, not cut at the class counts.
  soft = jnp.full((2, 6), 1 / 6)
  with pytest.raises(ValueError, match=r"soft labels of shape \(2, 6\); expected \[batch, 8\]"):
    jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(1), x, soft, train=False), images)
  with pytest.raises(ValueError, match="needs labels"):  # a conditional model without labels
    jax.eval_shape(lambda v: g.apply(v, z, None, train=False), g_vars)


def test_one_attribute_dcgan_keeps_its_parameter_tree():
  """Checkpoints of one-attribute DCGAN runs stay readable: a plain embedding, as before."""
  g = Generator(image_size=16, num_classes=(4,), z_dim=8, width=8, embed_dim=4)
  labels = jnp.zeros((2,), jnp.int32)
  v = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((2, 8)), labels, train=False))
  assert v["params"]["class_embed"]["embedding"].shape == (4, 4)


def test_discriminator_downsample_impls_agree():
  """'strided' and 's2d' D: one parameter tree, the same logits and input gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  labels = jnp.array([1, 3])
  make = lambda impl: Discriminator(image_size=16, num_classes=4, width=8, norm="none",
                                    downsample_impl=impl)
  v = make("strided").init(jax.random.PRNGKey(1), x, labels, train=False)
  v_s2d = make("s2d").init(jax.random.PRNGKey(1), x, labels, train=False)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(v_s2d)
  assert set(v["params"]) == {"down0", "down1", "logit", "class_projection"}
  assert set(v["params"]["down1"]) == {"kernel", "bias"}  # norm='none': biases, as nn.Conv had
  run = lambda impl: jax.value_and_grad(
      lambda x: jnp.sum(make(impl).apply(v, x, labels, train=False) ** 2))(x)
  (a, da), (b, db) = run("strided"), run("s2d")
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(da, db, rtol=1e-4, atol=1e-6)
  # ...and really two lowerings: only 'strided' has stride-2 convolutions.
  strides = lambda impl: {e.params["window_strides"] for e in jax.make_jaxpr(
      lambda x: make(impl).apply(v, x, labels, train=False))(x).jaxpr.eqns
                          if e.primitive.name == "conv_general_dilated"}
  assert strides("strided") == {(2, 2)} and strides("s2d") == {(1, 1)}


def test_dcgan_builder_passes_the_downsample_impl(make_config):
  assert models.build_models(make_config())[1].downsample_impl == "strided"  # 'auto'
  config = make_config(**{"model.downsample_impl": "s2d"})
  assert models.build_models(config)[1].downsample_impl == "s2d"


@pytest.mark.parametrize("impl", ["strided", "s2d"])
def test_discriminator_keeps_its_parameter_tree(impl):
  """D's convs are layers.DownConv, with nn.Conv's parameters: older checkpoints still load."""
  d = Discriminator(image_size=16, width=8, downsample_impl=impl)
  v = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False))
  shapes = jax.tree_util.tree_map(lambda a: a.shape, v["params"])
  assert shapes == {"down0": {"kernel": (4, 4, 3, 8), "bias": (8,)},
                    "down1": {"kernel": (4, 4, 8, 16)},  # no bias before BatchNorm
                    "down1_bn": {"scale": (16,), "bias": (16,)},
                    "logit": {"kernel": (256, 1), "bias": (1,)}}


def test_bfloat16_discriminator_head_sums_in_float32():
  """The logit sums 4*4*C products; in bfloat16 a logit near 5 would round to steps of 1/32."""
  d = Discriminator(image_size=16, width=32, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  v = d.init(jax.random.PRNGKey(1), x, train=False)
  kernel = 6.0 * jax.random.normal(jax.random.PRNGKey(2), v["params"]["logit"]["kernel"].shape)
  v["params"]["logit"]["kernel"] = kernel
  head_inputs = []

  def record(next_fun, args, kwargs, context):
    if context.module.name == "logit":
      head_inputs.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    logits = np.asarray(d.apply(v, x, train=False))
  features = np.asarray(head_inputs[0], np.float64)  # bfloat16 activations, exactly
  expected = features @ np.asarray(kernel, np.float64)[:, 0]
  assert np.abs(expected).max() > 2  # logits large enough for bfloat16 to show
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"model.d_norm": "none"}, {"model.d_norm": "layer"}, {}, {"model.norm_impl": "flax"},
    {"model.upsample_impl": "subpixel"}, {"model.upsample_impl": "dilated"},
    {"model.upsample_impl": "phase_conv", "model.downsample_impl": "s2d"},
    {"model.name": "resnet", "data.image_size": 32, "model.attention_resolution": 16},
    {"model.name": "resnet", "data.image_size": 32, "model.norm_impl": "flax"}])
def test_bfloat16_gradients_are_not_summed_in_bfloat16(make_config, overrides):
  """A parameter's gradient summed over the batch and the pixels (a bias's, attention's gamma)
  is summed in float32 in a bfloat16 model: bfloat16 (8 significant bits) stops counting at
  256 equal terms. Only the 2x2 max/average pools' and nearest upsampling's sums of 2 to 4 values
  remain in bfloat16 (activations' gradients, not parameters')."""
  config = make_config(**{"train.dtype": "bfloat16", **overrides})
  g, d = models.build_models(config)
  size, z = config.data.image_size, jnp.ones((4, config.model.z_dim))
  labels, images = jnp.array([0, 1, 2, 0]), jnp.ones((4, config.data.image_size, size, 3))
  # Only the gradient's jaxpr is read, never a value: zeros of the variables' shapes (eval_shape
  # traces the init; running it op by op compiled each op, 20 s for the attention ResNet).
  zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  g_vars = zeros(jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=True)))
  d_vars = zeros(jax.eval_shape(lambda: d.init(jax.random.PRNGKey(1), images, labels, train=True)))

  def loss(module, variables, inputs):
    def of(params):
      out, _ = module.apply({**variables, "params": params}, inputs, labels, train=True,
                            mutable=[k for k in variables if k != "params"])
      return jnp.sum(out.astype(jnp.float32))
    return of

  for module, variables, inputs in ((g, g_vars, z), (d, d_vars, images)):
    jaxpr = jax.make_jaxpr(jax.grad(loss(module, variables, inputs)))(variables["params"])
    equations = list(jaxpr_equations(jaxpr.jaxpr))
    # The scan reaches the model's own work (its bfloat16 convolutions): an
    # empty scan would find no bfloat16 sum either.
    assert any(e.primitive.name == "conv_general_dilated" and e.invars[0].aval.dtype ==
               jnp.bfloat16 for e in equations), type(module).__name__
    wide = [(str(e.invars[0].aval), str(e.outvars[0].aval)) for e in equations
            if e.primitive.name == "reduce_sum" and e.invars[0].aval.dtype == jnp.bfloat16
            and e.invars[0].aval.size > 4 * e.outvars[0].aval.size]
    assert not wide, wide
