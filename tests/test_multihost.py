"""multihost: the decisions every process takes alike, on two real CPU processes."""

import json
import os
import subprocess
import sys

from jaxgan import multihost
from tests.conftest import REPO, xla_flags

TWO_PROCESSES = r"""
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from jaxgan import multihost
me = jax.process_index()
print(json.dumps({
    "all": [multihost.all_processes(me == 0), multihost.all_processes(True)],
    "any": [multihost.any_process(me == 1), multihost.any_process(False)],
    "signal": [multihost.first_signal(15 if me == 1 else None), multihost.first_signal(None)],
    "from_0": [multihost.from_process_0(me == 0), multihost.from_process_0(1.5 + me)],
}))
"""


def test_one_process_takes_its_own_decisions():
  assert multihost.all_processes(True) and not multihost.any_process(False)
  assert multihost.first_signal(None) is None and multihost.first_signal(2) == 2
  assert multihost.from_process_0(2.5) == 2.5


def test_two_processes_agree():
  port = 20000 + (os.getpid() + 104729) % 20000
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, f"localhost:{port}", str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert results[0] == results[1] == {"all": [False, True], "any": [True, False],
                                      "signal": [15, None], "from_0": [True, 1.5]}
