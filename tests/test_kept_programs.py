"""kept_programs: functions made once per equal arguments, and kept apart where code patches."""

from jaxgan import kept_programs


def _maker(made: list):
  def make(*args):
    made.append(args)
    return object()
  return make


def test_equal_hashable_arguments_get_the_function_made_before():
  made = []
  make = _maker(made)
  first = kept_programs.kept(make, 1, "a")
  assert kept_programs.kept(make, 1, "a") is first and made == [(1, "a")]
  assert kept_programs.kept(make, 2, "a") is not first
  assert kept_programs.kept(make, [1]) is not kept_programs.kept(make, [1])  # unhashable: afresh


def test_functions_kept_apart_are_dropped_at_its_end_and_those_before_kept_again():
  made = []
  make = _maker(made)
  before = kept_programs.kept(make, 1)
  with kept_programs.kept_apart():
    inside = kept_programs.kept(make, 1)  # not the one made outside: patches may differ
    assert inside is not before and kept_programs.kept(make, 1) is inside
  assert kept_programs.kept(make, 1) is before
  with kept_programs.kept_apart():
    assert kept_programs.kept(make, 1) not in (before, inside)  # the last inside one dropped
  assert len(made) == 3


def test_the_suite_tells_patches_of_traced_code_from_host_patches():
  """conftest's check behind PATCHES_TRACED_CODE: what a monkeypatch may change in a program."""
  import os

  import conftest
  import pytest

  from jaxgan import losses, sampling, writers

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(writers.MetricsWriter, "write_scalars", lambda *a: None)  # host code
    patch.setattr(sampling, "save_png", lambda *a: None)  # a traced module's host function
    patch.setenv("JAXGAN_TEST_VARIABLE", "1")
    assert conftest._traced_patches(patch) == []
    patch.setattr(losses, "LOSSES", losses.LOSSES)  # what a train step traces
    patch.setattr(sampling.jax.random, "normal", sampling.jax.random.normal)
    patch.setitem({}, "protocol", None)  # a registry's entries, say
    assert conftest._traced_patches(patch) == [
        "jaxgan.losses.LOSSES", "jax.random.normal", "['protocol']"]
    assert os.environ["JAXGAN_TEST_VARIABLE"] == "1"
