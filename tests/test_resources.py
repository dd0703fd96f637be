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


def _cgroups(tmp_path, proc_lines, files):
  tmp_path.mkdir()
  proc = tmp_path / "cgroup"
  proc.write_text("".join(line + "\n" for line in proc_lines))
  for name, value in files.items():
    (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "fs" / name).write_text(value + "\n")
  return resources.cgroup_memory_limit(str(proc), str(tmp_path / "fs"))


def test_a_cgroup_memory_limit_is_read_from_v2_and_v1_and_the_lowest_above_counts(tmp_path):
  """A container's limit, not the host's memory, is what the out-of-memory killer enforces."""
  # v2: the process's own cgroup and those above it; "max" is no limit.
  assert _cgroups(tmp_path / "a", ["0::/kubepods/pod1"], {
      "kubepods/pod1/memory.max": "max", "kubepods/memory.max": "34359738368",
      "memory.max": "max"}) == 32 * 2**30
  # Inside a container: /proc names the host's path, its own cgroup is mounted at the root.
  assert _cgroups(tmp_path / "b", ["0::/system.slice/docker-1.scope"],
                  {"memory.max": "1073741824"}) == 2**30
  # v1: the memory controller's hierarchy; its "no limit" is a page-rounded 2^63 - 1.
  assert _cgroups(tmp_path / "c", ["4:memory:/job/7", "3:cpu,cpuacct:/job/7"], {
      "memory/memory.limit_in_bytes": "9223372036854771712",
      "memory/job/7/memory.limit_in_bytes": "2147483648"}) == 2 * 2**30
  # No limit set anywhere, no cgroup files, or no /proc at all: None.
  assert _cgroups(tmp_path / "d", ["4:memory:/", "0::/"], {
      "memory/memory.limit_in_bytes": "9223372036854771712", "memory.max": "max"}) is None
  assert _cgroups(tmp_path / "e", ["0::/x"], {}) is None
  assert resources.cgroup_memory_limit(str(tmp_path / "missing"), str(tmp_path)) is None


def test_the_memory_checks_use_a_container_limit_below_the_host_memory(monkeypatch):
  physical = resources.host_memory_bytes()
  monkeypatch.setattr(resources, "cgroup_memory_limit", lambda: 2**30)
  assert resources.host_memory_bytes() == 2**30 < physical
  assert resources.beyond_host_memory(2**30) == ""
  assert resources.beyond_host_memory(2**31) == (
      "2 GiB, more than its container's (cgroup) limit of 1 GiB of memory")
  monkeypatch.setattr(resources, "cgroup_memory_limit", lambda: 2**62)  # above the host's
  assert resources.host_memory_bytes() == physical
  assert resources.beyond_host_memory(physical + 1).endswith(
      f"more than this host's {physical / 2**30:.4g} GiB of memory")
