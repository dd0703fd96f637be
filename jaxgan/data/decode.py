"""Decoding image files into uint8 arrays: every core, the one loader, and a decode cache.

`decode_all` runs `images.load_image` over a list of paths in spawned worker processes (which
import the parent's main module and `jaxgan.data`: no JAX, no TensorFlow) with a progress bar;
files that fail are skipped with their reason. With a cache file, the accepted images go to a
memory-mapped .npy beside an index (`read_decode_cache` / `write_decode_index`), named by
`decode_cache_key`: one decode serves every later run and every process of a host
(`atomic_write`: private temporary names, one builder under a lock). A file lost to the
storage's passing error is retried once and never cached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import NamedTuple, Optional, Sequence

import numpy as np

from jaxgan import progress as progress_lib, resources
from jaxgan import stopping
from jaxgan.atomic_write import check_free_space, private_name, remove_stale, reserve
from jaxgan.data.images import LOADER_VERSION, Loaded, LoadOptions, load_image

log = logging.getLogger(__name__)


class DecodeError(RuntimeError):
  """Decoding could not finish (a worker process died, or could not be started)."""


def num_workers(requested: int = 0) -> int:
  """Decoding processes: `requested`, or every core this process may run on when 0 (the
  affinity mask, which SLURM and containers narrow, not the machine's core count)."""
  if requested > 0:
    return requested
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _load(args: tuple[str, LoadOptions]) -> Loaded:
  return load_image(*args)


def _start_worker() -> None:
  """A decoding worker's set-up. It ignores SIGINT and SIGHUP, which a terminal sends to the
  whole process group: the parent decides (the trainer stops at the end of the stage). It ends
  itself when the parent dies (a second Ctrl-C, SIGKILL): it would otherwise wait for work
  forever, holding its memory, since it holds both ends of the executor's queue."""
  for sig in (signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
  parent = multiprocessing.parent_process()
  if parent is not None:
    threading.Thread(target=_exit_with_the_parent, args=(parent.sentinel,), daemon=True,
                     name="jaxgan-parent-watch").start()


@contextlib.contextmanager
def _terminal_signals_ignored():
  """SIGINT and SIGHUP ignored while the workers start: a process started with a signal ignored
  keeps it so (Python too), so a Ctrl-C during a worker's start-up (its imports, before its
  initializer runs) cannot kill it and break the pool. The parent ignores one too for these
  milliseconds. Only the main thread may change signal handlers."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGHUP)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _watch_for_deaths(pool: concurrent.futures.ProcessPoolExecutor,
                      done: multiprocessing.connection.Connection) -> None:
  """Makes a worker's death fail the pool however it dies. One killed while it writes a result
  (a chunk of images is larger than the pipe's buffer, so written in parts) left the executor's
  reader waiting for the rest forever (a group SIGTERM hung a run's start 1 time in 40; the OOM
  killer would hang it for good): the pipe's writing ends stayed open, in the other workers (one
  waits for the write lock the dead one held) and in this process. This process's end is closed
  now (it writes no result; map has started every worker it will), and a thread ends the other
  workers once one dies before `done` is readable (closed): the read then ends (EOF) and the
  executor fails the pool, as for a worker that dies between results. The thread closes no
  file: a late one at a normal shutdown ends workers that are ending anyway. Uses the
  executor's private fields (as CPython 3.11 names them): without them, nothing is done."""
  processes = list(getattr(pool, "_processes", {}).values())
  writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
  if not processes or writer is None:
    done.close()
    return
  writer.close()

  def watch() -> None:
    with done:
      sentinels = [p.sentinel for p in processes]
      if set(sentinels) & set(multiprocessing.connection.wait([done] + sentinels)):
        for process in processes:
          process.kill()

  threading.Thread(target=watch, daemon=True, name="jaxgan-decode-watch").start()


def _exit_with_the_parent(sentinel: int) -> None:
  multiprocessing.connection.wait([sentinel])  # ready once the parent process has ended
  os._exit(1)


class Decoded(NamedTuple):
  """What `decode_all` read: the accepted files' images (uint8 [M, S, S, 3], in input order),
  their indices into the paths, the skipped files [{'path', 'reason'}], and how many of the
  images were enlarged to S (None where a cache from before that count does not know)."""
  images: np.ndarray
  indices: np.ndarray
  skipped: list
  upscaled: Optional[int]


def memory_problem(count: int, image_size: int) -> str:
  """Why `count` images decoded at `image_size` cannot be held in this host's memory, or '':
  said before decoding, not by the OS's out-of-memory kill (no message) or numpy's traceback."""
  beyond = resources.beyond_host_memory(count * image_size**2 * 3)
  return f"{count} images at {image_size}x{image_size} (3 bytes a pixel) take {beyond}" if (
      beyond) else ""


def decode_all(paths: Sequence[str], options: LoadOptions, workers: int = 0,
               desc: str = "decode", cache_file: Optional[str] = None) -> Decoded:
  """Loads every path with the one image loader, in parallel, with a progress bar. With
  `cache_file`, images go to a memory-mapped .npy; without one, they must fit in memory (callers
  check `memory_problem` first, to say so in their own words)."""
  size = options.image_size
  n = len(paths)
  workers = min(num_workers(workers), max(n, 1))
  if cache_file:
    folder = os.path.dirname(os.path.abspath(cache_file))
    os.makedirs(folder, exist_ok=True)
    remove_stale(cache_file)
    # Every image, then, where some were skipped, the kept ones compacted into a second file: up
    # to twice the set at once.
    check_free_space(folder, 2 * n * size * size * 3, f"decoding {n} images at {size}x{size}")
    # Published by a rename: a reader never maps a file that is being written or truncated.
    private = private_name(cache_file)
    out = np.lib.format.open_memmap(private + ".all.npy", "w+", np.uint8, (n, size, size, 3))
    try:
      reserve(private + ".all.npy", f"decoding {n} images at {size}x{size}")
      return _decode_into(paths, options, workers, desc, out, cache_file, private)
    finally:  # a crash or Ctrl-C leaves no full-size temporary behind
      for leftover in (private + ".all.npy", private + ".npy"):
        if os.path.exists(leftover):
          os.remove(leftover)
  return _decode_into(paths, options, workers, desc, np.empty((n, size, size, 3), np.uint8))


def _decode_into(paths, options, workers, desc, out, cache_file=None, private=None):
  n = len(paths)
  size = options.image_size
  keep, upscaled = np.zeros(n, bool), np.zeros(n, bool)
  skipped = []
  with progress_lib.progress(n, desc, enabled=n >= 200) as progress:
    _load_all(paths, options, workers, out, (keep, upscaled), skipped, progress)
  skipped = _retry_transient(skipped, options, out, (keep, upscaled))
  skipped = [{k: v for k, v in s.items() if k != "index"} for s in skipped]
  indices = np.flatnonzero(keep)
  if cache_file:
    if len(indices) == n:  # nothing skipped: the decoded file is the set, renamed, not copied
      out.flush()
      del out
      os.replace(private + ".all.npy", private + ".npy")
    else:
      kept = np.lib.format.open_memmap(private + ".npy", "w+", np.uint8,
                                       (len(indices), size, size, 3))
      reserve(private + ".npy", f"decoding {n} images at {size}x{size}")
      chunk = _chunk_rows(out)
      for start in range(0, len(indices), chunk):
        kept[start:start + chunk] = out[indices[start:start + chunk]]
      kept.flush()
      del out, kept
    # Only a complete decode is published: one that lost files to the storage's passing errors
    # must not replace a complete array another process published (its index would no longer
    # fit). It is used from its private file, unlinked once mapped.
    published = cache_file + ".npy" if is_complete(skipped) else private + ".npy"
    if published != private + ".npy":
      os.replace(private + ".npy", published)
    images = np.load(published, mmap_mode="r")
  else:
    images = _compact(out, indices)
  return Decoded(images, indices, skipped, int(upscaled.sum()))


def _load_all(paths, options, workers, out, marks, skipped, progress) -> None:
  """Loads every path into `out`, marking `marks` (kept, upscaled), listing `skipped`: in worker
  processes, or in this one with one worker."""
  jobs = ((p, options) for p in paths)
  if workers > 1:
    # spawn, not fork: the parent may hold JAX/TensorFlow threads, which fork would corrupt. An
    # executor, not multiprocessing.Pool: a worker that dies (the OOM killer, a signal) fails
    # the decode with BrokenProcessPool instead of leaving it waiting for the lost tasks.
    pool = done = None
    try:
      try:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, multiprocessing.get_context("spawn"), initializer=_start_worker)
        with _terminal_signals_ignored():  # inherited by the workers from their first instruction
          results = pool.map(_load, jobs, chunksize=64)  # submits everything: starts the workers
        done_reading, done = multiprocessing.connection.Pipe(duplex=False)
      except OSError as e:
        # Starting the processes (EAGAIN, too many open files), not the storage, which the
        # caller would name instead.
        raise DecodeError(f"starting {workers} decoding worker processes failed ({e})") from None
      _watch_for_deaths(pool, done_reading)
      _collect(results, paths, out, marks, skipped, progress)
    except concurrent.futures.process.BrokenProcessPool:
      # SIGTERM keeps its default in the workers (the executor ends a broken pool's with it):
      # one sent to the whole process group ends them, and the trainer, which got it too,
      # then stops instead of reporting this.
      raise DecodeError("a decoding worker process died (a signal, or the system ran out of "
                        "memory)") from None
    finally:  # on an error, the queued chunks are dropped, not decoded first
      if done is not None:
        done.close()  # before the shutdown, whose workers' ends are no deaths
      if pool is not None:
        pool.shutdown(cancel_futures=True)
  else:
    _collect(map(_load, jobs), paths, out, marks, skipped, progress)


def log_upscaled(upscaled: Optional[int], kept: int, where: str, size: int, key: str) -> None:
  """Warns when images were enlarged to `size` (`key`: the setting's name in the caller's
  words): their pixels are interpolated, so samples trained on them can be no sharper than the
  originals, and an FID against them measures the blur too."""
  if upscaled:
    log.warning("%d of the %d images of %s are smaller than %d pixels on their long side and "
                "were upscaled to %dx%d: the model learns their interpolated pixels, not more "
                "detail; a smaller %s keeps them sharp", upscaled, kept, where, size, size, size,
                key)


def _chunk_rows(out: np.ndarray, chunk_bytes: int = 64 << 20) -> int:
  """Rows of `out` per gathered chunk: about `chunk_bytes` of temporary, whatever the image size
  (a fixed 4096 rows is 12 GB at 1024x1024)."""
  return max(1, chunk_bytes // max(out[0].nbytes if len(out) else 1, 1))


def _compact(out: np.ndarray, indices: np.ndarray, chunk_bytes: int = 64 << 20) -> np.ndarray:
  """out[indices] for ascending `indices`, in place: a view of `out`'s first len(indices) rows,
  not a second array the size of the data (which doubled a large decode's peak memory for one
  skipped file). Rows before the first skipped one stay where they are; the rest move in chunks
  of about `chunk_bytes` (each gathered into a temporary first). indices[i] >= i, so each chunk
  reads rows at or after those it writes, and no later chunk reads a row an earlier one
  overwrote."""
  moved = np.flatnonzero(indices != np.arange(len(indices)))
  if len(moved) == 0:
    return out[:len(indices)]
  chunk = _chunk_rows(out, chunk_bytes)
  for start in range(int(moved[0]), len(indices), chunk):
    part = indices[start:start + chunk]
    out[start:start + len(part)] = out[part]
  return out[:len(indices)]


def is_complete(skipped: list[dict]) -> bool:
  """Whether a decode may be cached: no file was lost to an error that may pass."""
  return not any(s.get("transient") for s in skipped)


def _collect(results, paths, out, marks, skipped, progress) -> None:
  for i, loaded in enumerate(results):
    stopping.raise_if_interrupted()
    if loaded.image is None:
      skipped.append({"path": paths[i], "reason": loaded.reason, "index": i,
                      **({"transient": True} if loaded.transient else {})})
    else:
      _keep(out, marks, i, loaded)
    progress.update(1)


def _keep(out: np.ndarray, marks: tuple[np.ndarray, np.ndarray], i: int, loaded: Loaded) -> None:
  out[i] = loaded.image
  marks[0][i], marks[1][i] = True, loaded.upscaled


MAX_RETRIES = 64


def _retry_transient(skipped: list[dict], options: LoadOptions, out, marks) -> list[dict]:
  """Reads the files that failed with a storage error once more (the storage's hiccup has
  usually passed by the end of a decode), unless there are more than MAX_RETRIES of them (an
  outage: retrying one by one would only add timeouts); returns what is still skipped."""
  retry = sum(1 for s in skipped if s.get("transient")) <= MAX_RETRIES
  still = []
  for item in skipped:
    loaded = load_image(item["path"], options) if retry and item.get("transient") else None
    if loaded is not None and loaded.image is not None:
      _keep(out, marks, item["index"], loaded)
    else:
      still.append(item if loaded is None else {**item, "reason": loaded.reason})
  return still


def decode_cache_key(paths: Sequence[str], options: LoadOptions) -> str:
  """Names one decode of `paths`: each file's path, size, modification time and change time (an
  image replaced or edited in place is decoded again, also where its mtime was put back:
  `exiftool -P`, `touch -r`; a program can set mtime, never ctime), the load options and the
  loader's version. (A copy of the data, its ctimes new, is decoded again once.)"""
  import hashlib
  import json

  def stamp(path: str) -> list:
    try:
      st = os.stat(path)
      return [path, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    except OSError:  # vanished since the scan: decoding will report it
      return [path, -1, -1, -1]

  described = [LOADER_VERSION, dataclasses.asdict(options), [stamp(p) for p in paths]]
  return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def read_decode_cache(cache_file: str) -> Optional[Decoded]:
  """What a complete decode cache holds, or None. An index that does
  not fit the images (two writers' halves, a damaged file) is a miss: decoded again."""
  import json

  if not (os.path.exists(cache_file + ".npy") and os.path.exists(cache_file + ".json")):
    return None
  try:
    images = np.load(cache_file + ".npy", mmap_mode="r")
    with open(cache_file + ".json", encoding="utf-8") as f:
      meta = json.load(f)
    indices, skipped = np.asarray(meta["indices"], np.int64), list(meta["skipped"])
    upscaled = meta.get("upscaled")  # None: written before it was counted
  except (OSError, ValueError, KeyError, TypeError) as e:
    log.warning("decode cache %s unreadable (%s); decoding again", cache_file, e)
    return None
  if len(indices) != len(images):
    log.warning("decode cache %s: its index lists %d images, its array holds %d; decoding again",
                cache_file, len(indices), len(images))
    return None
  return Decoded(images, indices, skipped, None if upscaled is None else int(upscaled))


def write_decode_index(cache_file: str, decoded: Decoded) -> None:
  """Publishes the decode's index beside its array, which marks the cache complete; not when a
  file was lost to a storage error that may pass (EIO, a stale handle, also after a retry), not
  the file's: cached, it would drop that image from every later run."""
  import json

  transient = [s for s in decoded.skipped if s.get("transient")]
  if transient:
    log.warning("decode cache %s not marked complete: %d file(s) were unreadable (first: %s: "
                "%s), which may be passing; the next run decodes again", cache_file,
                len(transient), transient[0]["path"], transient[0]["reason"])
    return
  tmp = private_name(cache_file) + ".json"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"indices": decoded.indices.tolist(), "skipped": decoded.skipped,
               "upscaled": decoded.upscaled}, f)
  os.replace(tmp, cache_file + ".json")  # written last: its presence marks a complete cache
