"""Temporary names for files published by an atomic rename (write, then `os.replace`).

Caches (decoded images, reference features, converted Inception weights) may be written by
several processes at once, on several hosts sharing one folder: each must write under its own
name, so none truncates a file another is writing, and readers only ever see whole files.
"""

from __future__ import annotations

import os
import socket
import uuid


def private_name(path: str) -> str:
  """A temporary name beside `path` that no other process uses, also on another host sharing
  the folder: the pid alone is not enough, since containers often give every host's process the
  same one."""
  return f"{path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
