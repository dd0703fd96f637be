"""Shared fixtures: tiny configs that compile in seconds on a 2-core CPU."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """A class-conditional DCGAN at 16x16 with a handful of channels."""
  from jaxgan.config import base_config

  c = base_config()
  c.data.image_size = 16
  c.data.num_classes = 3
  c.model.z_dim = 8
  c.model.g_width = 8
  c.model.d_width = 8
  c.model.embed_dim = 4
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.sample_every = 2
  c.train.checkpoint_every = 2
  c.train.samples_per_class = 2
  c.train.ema_half_life_images = 64
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture
def make_config():
  return tiny_config


def run_module(module, *args, env=None, timeout=300):
  """Runs `python -m module args...` from the repo root; returns the CompletedProcess."""
  import subprocess

  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
