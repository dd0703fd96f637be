"""resources: the memory figures of the training log and the benchmark."""

import resource

import jax

from jaxgan import resources


class _Device:
  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_peak_is_the_largest_reported_and_none_where_no_device_reports_one():
  devices = [_Device({"peak_bytes_in_use": 5, "bytes_in_use": 1}), _Device(None),
             _Device({"peak_bytes_in_use": 9}), _Device({"bytes_in_use": 70}), object()]
  assert resources.peak_memory_bytes(devices) == 9
  assert resources.peak_memory_bytes(devices[1:2] + devices[3:]) is None
  # The default device: a CPU backend reports no peak; GPUs and TPUs do (the suite on a GPU).
  peak = resources.peak_memory_bytes()
  assert peak is None if jax.default_backend() == "cpu" else peak > 0


def test_host_memory_is_this_process_resident_size():
  resident = resources.host_resident_bytes()
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  assert 10 * 2**20 < resident <= peak * 1.01  # jax and numpy alone hold tens of MiB
  grown = b"\x01" * (256 * 2**20)  # written: resident, not just reserved
  assert resources.host_resident_bytes() > resident + 200 * 2**20
  del grown


def test_memory_row_in_gib_and_without_keys_for_unknown_figures(monkeypatch):
  row = resources.memory_row([_Device({"peak_bytes_in_use": 3 * 2**30})])
  assert row["memory/device_peak_gb"] == 3.0 and row["memory/host_gb"] > 0
  monkeypatch.setattr(resources, "host_resident_bytes", lambda: None)
  assert resources.memory_row([_Device(None)]) == {}
