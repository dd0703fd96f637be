"""atomic_write: private temporary names and the build lock of shared caches."""

import os
import subprocess
import sys
import time

from jaxgan import atomic_write
from tests.conftest import REPO

HOLD = """
import sys, time
from jaxgan.atomic_write import exclusive
with exclusive(sys.argv[1]):
  print("held", flush=True)
  time.sleep(1.5)
"""


def test_private_names_differ_per_call_and_name_the_host():
  a, b = atomic_write.private_name("/x/cache"), atomic_write.private_name("/x/cache")
  assert a != b and a.startswith("/x/cache.") and f".{os.getpid()}." in a


def test_a_second_process_waits_for_the_lock(tmp_path):
  lock = str(tmp_path / "new_folder" / "cache.lock")  # the folder is made for it
  holder = subprocess.Popen([sys.executable, "-c", HOLD, lock], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    start = time.perf_counter()
    with atomic_write.exclusive(lock):
      waited = time.perf_counter() - start
  finally:
    holder.wait(timeout=30)
  assert waited > 0.5  # it held the lock for 1.5 s after saying so
