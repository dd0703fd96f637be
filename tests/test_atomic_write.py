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


def test_publish_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
  """A rename committed before its data leaves an empty file after a host crash: the file is
  synced first, then renamed, then its folder synced (the rename itself made durable)."""
  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
    real_fsync(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace",)) or real_replace(a, b))
  (tmp_path / "rows.tmp").write_text("a\n")
  atomic_write.publish(str(tmp_path / "rows.tmp"), str(tmp_path / "rows.jsonl"))
  assert events == [("fsync", "rows.tmp"), ("replace",), ("fsync", tmp_path.name)]
  assert (tmp_path / "rows.jsonl").read_text() == "a\n" and not (tmp_path / "rows.tmp").exists()
