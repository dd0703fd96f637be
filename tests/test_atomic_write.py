"""atomic_write: private temporary names and the build lock of shared caches."""

import logging
import os
import subprocess
import sys

from jaxgan import atomic_write
from tests.conftest import REPO

HOLD = """
import sys, time
from jaxgan.atomic_write import exclusive
with exclusive(sys.argv[1]):
  print("held", flush=True)
  time.sleep(0.5)
  open(sys.argv[1] + ".released", "w").close()  # written last, still holding the lock
"""


def test_private_names_differ_per_call_and_name_the_host():
  a, b = atomic_write.private_name("/x/cache"), atomic_write.private_name("/x/cache")
  assert a != b and a.startswith("/x/cache.") and f".{os.getpid()}." in a


def test_a_second_process_waits_for_the_lock_and_says_so(tmp_path, caplog):
  """The waiter says once what it waits for (a TFDS download or a decode takes minutes, and the
  waiting processes logged nothing); a lock nobody holds is taken without a word."""
  lock = str(tmp_path / "new_folder" / "cache.lock")  # the folder is made for it
  holder = subprocess.Popen([sys.executable, "-c", HOLD, lock], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
  caplog.set_level(logging.WARNING, logger=atomic_write.__name__)
  try:
    assert holder.stdout.readline().strip() == "held"
    with atomic_write.exclusive(lock, "decoding /data/x"):
      # By order, not by time: in only once the holder's last act under the lock is done.
      released = os.path.exists(lock + ".released")
  finally:
    holder.wait(timeout=30)
  assert released
  assert caplog.messages == [f"waiting for another process to finish decoding /data/x (it holds "
                             f"{lock})"]
  caplog.clear()
  with atomic_write.exclusive(lock, "decoding /data/x"):
    pass
  assert caplog.messages == []


def test_a_waiter_whose_lock_file_was_removed_locks_the_one_at_the_path(tmp_path):
  """prepare removes a folder it made and left empty, its lock file too: a second preparation
  waiting on that lock must not go on holding a lock on the removed file (which excludes
  nobody), but take it on the file at the path, which it makes again."""
  import fcntl
  import threading

  lock = tmp_path / "out" / ".prepare.lock"
  inside, release = threading.Event(), threading.Event()
  seen = []

  def waiter():
    with atomic_write.exclusive(str(lock)):
      inside.set()
      with open(lock, "a") as other:  # a third party cannot take the lock at the path
        try:
          fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
          seen.append("free")
        except BlockingIOError:
          seen.append("held")
      release.wait(30)

  with atomic_write.exclusive(str(lock)):
    thread = threading.Thread(target=waiter)
    thread.start()
    assert not inside.wait(0.5)  # waiting on the holder
    os.remove(lock)
    os.rmdir(lock.parent)
  assert inside.wait(30)
  release.set()
  thread.join(30)
  assert seen == ["held"] and lock.exists()


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


def test_a_failed_publish_leaves_no_temporary_and_bulk_pngs_skip_the_sync(tmp_path, monkeypatch):
  import numpy as np
  import pytest

  from jaxgan import sampling

  def no_space(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", no_space)
  (tmp_path / "config.json.tmp").write_text("{}")
  with pytest.raises(OSError, match="No space"):
    atomic_write.publish(str(tmp_path / "config.json.tmp"), str(tmp_path / "config.json"))
  assert os.listdir(tmp_path) == []
  # generate's numbered samples (durable=False) are renamed without syncing, grids are synced.
  syncs = []
  monkeypatch.setattr(os, "fsync", syncs.append)
  image = np.zeros((4, 4, 3), np.uint8)
  sampling.save_png(image, str(tmp_path / "000000.png"), durable=False)
  assert syncs == [] and os.listdir(tmp_path) == ["000000.png"]
  sampling.save_png(image, str(tmp_path / "grid.png"))
  assert len(syncs) == 2
  # generate syncs its numbered samples once, at the end.
  from jaxgan import generation

  global_syncs = []
  monkeypatch.setattr(os, "sync", lambda: global_syncs.append(1))
  paths = generation._write_singles([(np.arange(3), [image] * 3), (np.arange(3, 5), [image] * 2)],
                                  str(tmp_path / "many"), 5)
  assert len(paths) == 5 and len(syncs) == 2 and global_syncs == [1]


def test_missing_folders_are_those_the_os_would_make_through_symlinks(tmp_path, monkeypatch):
  """'link/../pre/w' is deep/pre/w to the OS (it follows the link, then '..'), where abspath
  reads pre/w beside the link: listed as missing, a failed start then removed deep/pre/w, a
  folder that was there before it."""
  (tmp_path / "deep" / "real").mkdir(parents=True)
  (tmp_path / "link").symlink_to(tmp_path / "deep" / "real")
  monkeypatch.chdir(tmp_path)
  deep = os.path.realpath(tmp_path / "deep")
  assert atomic_write.missing_folders("link/../pre/w") == [f"{deep}/pre", f"{deep}/pre/w"]
  (tmp_path / "deep" / "pre" / "w").mkdir(parents=True)
  assert atomic_write.missing_folders("link/../pre/w") == []
  assert atomic_write.missing_folders("new/a") == [os.path.realpath("new"),
                                                   os.path.realpath("new/a")]


def test_a_pid_past_any_process_is_not_alive():
  """A damaged lock file's number (os.kill raised OverflowError: a traceback from generate)."""
  assert atomic_write.process_alive(os.getpid())
  assert not atomic_write.process_alive(10**20)
  assert not atomic_write.process_alive(0) and not atomic_write.process_alive(-1)  # groups


def test_reserve_says_a_full_disk_or_a_quota_in_one_line(tmp_path, monkeypatch):
  import errno

  import pytest

  path = tmp_path / "cache.npy"
  path.write_bytes(bytes(3 * 2**20))
  atomic_write.reserve(str(path), "decoding 9 images")  # room: nothing said
  for code, text in ((errno.ENOSPC, r"which has .* free$"),
                     (errno.EDQUOT, r"Disk quota exceeded$"), (errno.EIO, r"error$")):
    def refused(fd, offset, length, code=code):
      raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic_write.os, "posix_fallocate", refused)
    with pytest.raises(OSError, match=rf"^\[Errno {code}\] decoding 9 images needs 3.0 MiB in "
                       rf"{tmp_path}.*{text}") as info:
      atomic_write.reserve(str(path), "decoding 9 images")
    assert info.value.errno == code
  # A file system that cannot allocate ahead: the free-space check stands alone.
  def unsupported(fd, offset, length):
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")

  monkeypatch.setattr(atomic_write.os, "posix_fallocate", unsupported)
  atomic_write.reserve(str(path), "decoding 9 images")


def test_a_cache_dir_too_small_for_a_file_names_the_file_size_limit():
  """EFBIG (ulimit -f): 'set data.cache_dir to a folder you can write to' pointed elsewhere."""
  import errno

  from jaxgan.data.arrays import cache_dir_problem

  message = cache_dir_problem("/c", OSError(errno.EFBIG, "File too large"))
  assert message == ("config key data.cache_dir (/c): File too large; raise the file size limit "
                     "(ulimit -f), or set data.cache_dir to a file system that holds files this "
                     "large ('' keeps the decoded images in memory)")
