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
