"""Class interpolation: soft labels in the generators, label_interpolation_inputs, generate --between."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgan import generate, generation, label_choices, sample_inputs, sampling
from jaxgan.models.conditioning import ClassEmbed
from jaxgan.models.dcgan import Generator
from tests.conftest import run_module, tiny_config
from tests.test_attributes import catalog, two_columns  # noqa: F401  (fixtures reused)
from tests.test_resnet import Z_DIM, _models

B = 4


def _int_labels(classes):
  """Varied int labels [B] (one attribute) or [B, A], and their one-hot float concatenation."""
  cols = [(jnp.arange(B, dtype=jnp.int32) * (i + 1) + 1) % n for i, n in enumerate(classes)]
  ints = cols[0] if len(cols) == 1 else jnp.stack(cols, axis=1)
  soft = jnp.concatenate([jax.nn.one_hot(c, n) for c, n in zip(cols, classes)], axis=1)
  return ints, soft


def _generator(kind, classes):
  if kind == "dcgan":
    return Generator(16, classes, z_dim=Z_DIM, width=8, embed_dim=4), 16
  return _models(32, classes)[0], 32


@pytest.mark.parametrize("classes", [(3,), (3, 4)], ids=["one", "two"])
@pytest.mark.parametrize("kind", ["dcgan", "resnet"])
def test_one_hot_soft_labels_match_int_labels(kind, classes):
  g, _ = _generator(kind, classes)
  ints, soft = _int_labels(classes)
  z = jax.random.normal(jax.random.PRNGKey(1), (B, Z_DIM))
  variables = g.init(jax.random.PRNGKey(0), z, ints, train=False)
  # Initialising with soft labels builds the same parameters' layout: old checkpoints keep
  # loading. (Traced only: a second eager init of the ResNet cost ~4 s of the suite's CPU.)
  layout = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)
  soft_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, soft, train=False))
  assert layout(soft_vars) == layout(variables)
  # Unit-variance tables (DCGAN initialises them at N(0, 0.02)): the labels then visibly matter.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.random.normal(jax.random.PRNGKey(x.size), x.shape)
                       if "embedding" in jax.tree_util.keystr(path) else x), variables)
  apply = jax.jit(lambda v, labels: g.apply(v, z, labels, train=False))
  from_ints, from_soft = np.asarray(apply(variables, ints)), np.asarray(apply(variables, soft))
  # Freshly initialised DCGAN outputs are ~1e-4 (N(0, 0.02) weights): tolerances are relative.
  scale = np.abs(from_ints).max()
  np.testing.assert_allclose(from_soft, from_ints, rtol=1e-5, atol=1e-6 * scale)
  # The labels matter: other one-hot rows give other images (so the match above is not vacuous).
  other = np.asarray(apply(variables, jnp.roll(soft, 1, axis=0)))
  assert np.abs(other - from_ints).max() > 0.1 * scale


def test_mixture_embeds_as_the_mixture_of_embeddings():
  m = ClassEmbed((3, 4), 5)
  params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  t0 = np.asarray(params["params"]["attr0"]["embedding"])
  t1 = np.asarray(params["params"]["attr1"]["embedding"])
  soft = jnp.array([[0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0],
                    [0.0, 0.0, 1.0, 0.25, 0.0, 0.0, 0.75]])
  want = np.stack([0.5 * (t0[0] + t0[1]) + t1[2], t0[2] + 0.25 * t1[0] + 0.75 * t1[3]])
  np.testing.assert_allclose(np.asarray(m.apply(params, soft)), want, rtol=1e-6, atol=1e-6)
  # One attribute (the single-table path dcgan's plain nn.Embed also takes).
  one = ClassEmbed((3,), 5)
  p1 = one.init(jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32))
  table = np.asarray(p1["params"]["attr0"]["embedding"])
  np.testing.assert_allclose(np.asarray(one.apply(p1, jnp.array([[0.5, 0.0, 0.5]]))),
                             0.5 * (table[:1] + table[2:]), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"^soft labels of shape \(1, 6\); expected \[batch, 7\]"):
    m.apply(params, jnp.zeros((1, 6)))
  g = Generator(16, 3, z_dim=Z_DIM, width=8, embed_dim=4)
  z = jnp.zeros((1, Z_DIM))
  gv = g.init(jax.random.PRNGKey(0), z, jnp.zeros((1,), jnp.int32), train=False)
  with pytest.raises(ValueError, match=r"expected \[batch, 3\]"):
    g.apply(gv, z, jnp.zeros((1, 4)), train=False)


def test_label_interpolation_inputs():
  classes, rows, steps = (3, 4), 3, 5
  z, labels, cols = sample_inputs.label_interpolation_inputs(7, classes, 1, 0, 3, steps, rows, 6)
  assert cols == steps and z.shape == (rows * steps, 6) and labels.shape == (rows * steps, 7)
  grid = np.asarray(labels).reshape(rows, steps, 7)
  np.testing.assert_array_equal(grid[:, 0, 3:], np.tile([1, 0, 0, 0], (rows, 1)))
  np.testing.assert_array_equal(grid[:, -1, 3:], np.tile([0, 0, 0, 1], (rows, 1)))
  np.testing.assert_allclose(grid[:, 2, 3:], np.tile([0.5, 0, 0, 0.5], (rows, 1)), atol=1e-6)
  np.testing.assert_allclose(grid[..., :3].sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(grid[..., 3:].sum(-1), 1.0, atol=1e-6)
  # Attribute 0 is not given: one-hot, constant along a row, drawn from the seed's folded key.
  np.testing.assert_array_equal(grid[..., :3], grid[:, :1, :3].repeat(steps, axis=1))
  drawn = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(7), 0), (rows,), 0, 3)
  np.testing.assert_array_equal(grid[:, 0, :3], np.eye(3)[np.asarray(drawn)])
  # One latent per row, the seed's.
  zz = np.asarray(z).reshape(rows, steps, 6)
  ends = np.asarray(sample_inputs.latents(7, rows, 6))
  np.testing.assert_array_equal(zz, np.repeat(ends[:, None], steps, axis=1))
  assert np.abs(zz[0, 0] - zz[1, 0]).max() > 1e-3
  again = sample_inputs.label_interpolation_inputs(7, classes, 1, 0, 3, steps, rows, 6)
  np.testing.assert_array_equal(again[0], z)
  np.testing.assert_array_equal(again[1], labels)
  fixed = np.asarray(sample_inputs.label_interpolation_inputs(7, classes, 1, 0, 3, steps, rows, 6,
                                                         fixed={0: 2})[1])
  np.testing.assert_array_equal(fixed[:, :3], np.tile([0, 0, 1], (rows * steps, 1)))
  z1, one, _ = sample_inputs.label_interpolation_inputs(0, (5,), 0, 4, 1, 2, 1, 6, truncation=0.5)
  np.testing.assert_array_equal(one, [[0, 0, 0, 0, 1], [0, 1, 0, 0, 0]])
  assert np.abs(np.asarray(z1)).max() <= 0.5
  with pytest.raises(ValueError, match="cannot also be fixed"):
    sample_inputs.label_interpolation_inputs(0, classes, 1, 0, 3, 2, 1, 6, fixed={1: 0})


@pytest.fixture(scope="module")
def workdir(two_columns, tmp_path_factory):  # noqa: F811
  """A 1-step DCGAN run on (articleType: Shoes, Tshirts, Watches; baseColour: Black, Navy Blue)."""
  from jaxgan import trainer

  path = str(tmp_path_factory.mktemp("between") / "w")
  config = tiny_config(**{"data.source": "prepared", "data.path": str(two_columns),
                          "data.num_classes": 3, "data.extra_num_classes": "2",
                          "train.num_steps": 1, "train.n_critic": 1, "train.tensorboard": False})
  trainer.train_and_evaluate(config, path)
  return path


def test_generate_between(workdir, tmp_path):
  from jaxgan import saved_run

  between = "baseColour=Black:Navy Blue"
  a = generate.generate(workdir, 5, str(tmp_path / "a.png"), interpolate=3, between=between)
  assert Image.open(a[0]).size == (3 * 18 + 2, 2 * 18 + 2)  # ceil(5 / 3) rows of 3 columns
  b = generate.generate(workdir, 5, str(tmp_path / "b.png"), interpolate=3, between=between)
  assert open(a[0], "rb").read() == open(b[0], "rb").read()
  bare = generate.generate(workdir, 4, str(tmp_path / "c.png"), interpolate=4,
                           between="Shoes:Watches", label="baseColour=Black")
  assert Image.open(bare[0]).size == (4 * 18 + 2, 18 + 2)
  # The grid's end columns are the int-labelled images of the same latents.
  singles = generate.generate(workdir, 4, str(tmp_path / "singles") + "/", interpolate=2,
                              between=between, label="articleType=Tshirts")
  assert len(singles) == 4
  got = np.stack([np.asarray(Image.open(p)) for p in singles]).astype(int)
  config, _, state, _ = saved_run.load_checkpoint(workdir)
  from jaxgan import models

  generator = models.build_models(config)[0]
  sampler = sampling.make_sampler(generator)
  statistics = sampling.make_ema_statistics(config, generator)(state.ema_params,
                                                                state.g_batch_stats)
  z = sample_inputs.latents(0, 2, config.model.z_dim)
  for column, colour in enumerate([0, 1]):  # Black, Navy Blue
    labels = jnp.array([[1, colour]] * 2, jnp.int32)  # Tshirts
    ((_, want),) = sampling.sample_in_chunks(sampler, state.ema_params, statistics, z,
                                             labels, chunk=len(z))
    assert np.abs(got[column::2] - want.astype(int)).max() <= 1
  assert np.abs(got[0] - got[1]).max() > 0  # the two classes differ


@pytest.mark.parametrize("between, label, message", [
    ("baseColour=Black:Purple", None,
     r"^--between baseColour='Purple': not a class of baseColour; choose one of: Black, Navy Blue "
     r"\(or an index 0..1\)$"),
    ("colour=Black:Navy Blue", None,
     r"^--between 'colour=Black:Navy Blue': this model has no attribute 'colour'; choose one of: "
     r"articleType, baseColour$"),
    ("Shoes:Boots", None, r"^--between 'Boots' is not a class of this model; choose one of: "
                          r"Shoes, Tshirts, Watches \(or an index 0..2\)$"),
    ("Shoes", None, r"^--between 'Shoes': expected FROM:TO or ATTRIBUTE=FROM:TO"),
    ("Navy Blue:Black", None,  # two classes of the second attribute, named as the first's
     r"^--between 'Navy Blue:Black': 'Navy Blue' and 'Black' are classes of baseColour, not of "
     r"the first attribute articleType: write --between 'baseColour=Navy Blue:Black'$"),
    ("baseColour=0:1", "baseColour=Black",
     r"^--between 'baseColour=0:1' and --label both set attribute 'baseColour'; drop that --label$"),
])
def test_generate_between_errors(workdir, tmp_path, between, label, message, monkeypatch):
  from jaxgan import checkpoint

  # Refused from the checkpoint's meta: its state (the whole model, for a big one) is not read.
  monkeypatch.setattr(checkpoint.Checkpointer, "restore", lambda *a: pytest.fail("read the state"))
  with pytest.raises(ValueError, match=message):
    generate.generate(workdir, 2, str(tmp_path / "x.png"), label=label, interpolate=2,
                      between=between)
  assert not os.path.exists(tmp_path / "x.png")


@pytest.mark.parametrize("choice", ["latest", "1"])
def test_generate_refuses_a_label_before_reading_the_state(workdir, tmp_path, choice,
                                                           monkeypatch):
  from jaxgan import checkpoint

  read = []
  real_restore = checkpoint.Checkpointer.restore
  monkeypatch.setattr(checkpoint.Checkpointer, "restore",
                      lambda *a: read.append(1) or real_restore(*a))
  with pytest.raises(ValueError, match=r"^--label 'Boots' is not a class of this model"):
    generate.generate(workdir, 2, str(tmp_path / "x.png"), label="Boots", checkpoint=choice)
  assert not read
  generate.generate(workdir, 2, str(tmp_path / "x.png"), label="Shoes", checkpoint=choice)
  assert read  # the same patch sees a read


def test_between_needs_interpolate_and_a_conditional_model(tmp_path):
  with pytest.raises(ValueError, match=r"^--between needs --interpolate N"):
    generate.generate(str(tmp_path / "none"), 2, str(tmp_path / "x.png"), between="0:1")
  with pytest.raises(ValueError, match=r"^--between: this model is unconditional; drop --between$"):
    label_choices.resolve_between("0:1", [], ())
  # Indices work, and class names may hold ':' and spaces.
  attributes = [("kind", ["a:b", "c"]), ("colour", ["Navy Blue", "Black"])]
  assert label_choices.resolve_between("a:b:c", attributes, (2, 2)) == (0, 0, 1)
  assert label_choices.resolve_between("colour=Black : Navy Blue", attributes, (2, 2)) == (1, 1, 0)
  assert label_choices.resolve_between("1:0", attributes, (2, 2)) == (0, 1, 0)
  # One class twice, by name or by its index: columns that do not move (it wrote such a grid).
  for same in ("c:c", "1:c", "colour=Black:1", "a:b:a:b"):
    with pytest.raises(ValueError, match=r"FROM and TO are the same class \((c|Black|a:b)\), so "
                                         r"the columns would not move; name two different "
                                         r"classes$"):
      label_choices.resolve_between(same, attributes, (2, 2))


def test_cli_between(workdir, tmp_path):
  out = tmp_path / "cli.png"
  ok = run_module("jaxgan.generate", "--workdir", workdir, "--num", "2", "--out", str(out),
                  "--interpolate", "3", "--between", "baseColour=Black:Navy Blue")
  assert ok.returncode == 0, ok.stderr
  assert Image.open(out).size == (3 * 18 + 2, 18 + 2)  # ceil(2 / 3) = 1 row
  bad = run_module("jaxgan.generate", "--workdir", workdir, "--out", str(tmp_path / "y.png"),
                   "--between", "Shoes:Watches")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == ("error: --between needs --interpolate N (the "
                                                 "columns from FROM to TO, N >= 2)")


def test_a_grid_rounds_num_to_the_nearest_multiple_of_the_classes_halves_up():
  """8 classes: --num 12 and 20 both lie halfway; each goes up (round() gave 16 for both)."""
  for num, expected in ((12, 16), (20, 24), (11, 8), (13, 16), (3, 8), (44, 48)):
    got, labels, cols = generation._plain_labels(num, 8, {}, [], False, None, 0, 0)
    assert (got, cols, len(labels)) == (expected, expected // 8, expected), num


def test_numbers_are_names_when_the_class_names_are_numbers():
  """Category ids as class names: '4' is not one of them, and is refused rather than taken as
  the index of the class '3'; with names that are words, numbers are indices."""
  ids = ["1", "10", "2", "20", "3"]
  assert label_choices.resolve_label("3", ids, 5) == 4
  assert label_choices.resolve_label("10", ids, 5) == 1
  with pytest.raises(ValueError, match=r"^--label '4' is not a class of this model; choose one "
                                       r"of: 1, 10, 2, 20, 3$"):
    label_choices.resolve_label("4", ids, 5)
  assert label_choices.resolve_label("1", ["Shoes", "Tshirts"], 2) == 1


def test_a_label_in_another_unicode_form_is_the_same_class():
  """A class folder made on macOS is named in decomposed form ('a' + U+0308); a terminal types
  'ä' composed: they print alike, and --label said "not a class; did you mean 'Täschen'?"."""
  import unicodedata

  decomposed = unicodedata.normalize("NFD", "Täschen")
  assert decomposed != "Täschen"
  assert label_choices.resolve_label("Täschen", ["Schuhe", decomposed], 2) == 1
  assert label_choices.resolve_label(decomposed, ["Schuhe", "Täschen"], 2) == 1


def test_a_label_padded_with_spaces_is_its_class():
  """' Watches ' (a shell's quoting) was refused with "did you mean 'Watches'?", though labels
  are stripped when read; an index likewise, and a padded name of no class is still refused."""
  assert label_choices.resolve_label(" Schuhe ", ["Schuhe", "Taschen"], 2) == 0
  assert label_choices.resolve_label("1 ", ["Schuhe", "Taschen"], 2) == 1
  with pytest.raises(ValueError, match=r"^--label 'Hosen' is not a class of this model"):
    label_choices.resolve_label(" Hosen", ["Schuhe", "Taschen"], 2)


def test_a_mistyped_label_gets_a_suggestion_and_another_attributes_class_its_prefix():
  with pytest.raises(ValueError, match=r"^--label 'footwear' is not a class of this model; did "
                                       r"you mean 'Footwear'\? choose one of: Apparel, Footwear"):
    label_choices.resolve_label("footwear", ["Apparel", "Footwear"], 2)
  # A rare class prepare merged into 'other' (--rare-classes other): where it went.
  with pytest.raises(ValueError, match=r"^--label 'Heels' is not a class of this model; if "
                                       r"'Heels' was a class of the data with fewer images than "
                                       r"its min_class_count, it is part of 'other'; choose one "
                                       r"of: Shirts, Watches, other"):
    label_choices.resolve_label("Heels", ["Shirts", "Watches", "other"], 3)
  # A near spelling of another class is no proof: the real catalog's 'Sandals' (merged into
  # 'other' at --min-class-count 20) was only told "did you mean 'Handbags'?".
  with pytest.raises(ValueError, match=r"^--label 'Sandals' is not a class of this model; did "
                                       r"you mean 'Handbags'\? or if 'Sandals' was a class of the "
                                       r"data with fewer images than its min_class_count, it is "
                                       r"part of 'other'; choose "):
    label_choices.resolve_label("Sandals", ["Handbags", "Watches", "other"], 3)
  # Not for an index out of range: no class was merged into it.
  with pytest.raises(ValueError, match=r"^--label '7' is not a class of this model; choose one "
                                       r"of: Shirts, Watches, other \(or an index 0..2\)$"):
    label_choices.resolve_label("7", ["Shirts", "Watches", "other"], 3)
  with pytest.raises(ValueError, match=r"^--label baseColour='Nvy Blue': not a class of "
                                       r"baseColour; did you mean 'Navy Blue'\? choose one of"):
    label_choices.resolve_label("Nvy Blue", ["Black", "Navy Blue"], 2, "baseColour")
  attributes = [("articleType", ["Shirts", "Watches"]), ("baseColour", ["Black", "Navy Blue"])]
  with pytest.raises(ValueError, match=r"^--label 'Navy Blue' is a class of baseColour, not of "
                                       r"the first attribute articleType: write --label "
                                       r"'baseColour=Navy Blue'$"):
    label_choices.resolve_labels(["Navy Blue"], attributes, [2, 2])
  assert label_choices.resolve_labels(["Watches", "baseColour=Navy Blue"], attributes, [2, 2]) == {
      0: 1, 1: 1}
