"""PyTorch reference of the same DCGAN-64 step, for side-by-side speed comparisons.

torch is not a jaxgan dependency: install it where you run this. Same math as jaxgan's
configs/benchmark/dcgan64.py: nz=100, ngf=ndf=64, BatchNorm, BCE, Adam 2e-4 / 0.5; one step = a D
update on real + fake, then a G update through the updated D, reusing the step's single G forward
(without D's weight gradients, which G's update does not use; since 2026-12-04).

  python benchmarks/torch_dcgan_reference.py --mode bf16_channels_last --batch 1024
  modes: fp32 (TF32 matmuls allowed), bf16_channels_last (autocast bfloat16 + channels_last)

Prints one JSON line (median of individually timed, synchronised steps after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn


def generator() -> nn.Module:
  def up(cin, cout):
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

  return nn.Sequential(
      nn.ConvTranspose2d(100, 512, 4, 1, 0, bias=False), nn.BatchNorm2d(512), nn.ReLU(True),
      *up(512, 256), *up(256, 128), *up(128, 64),
      nn.ConvTranspose2d(64, 3, 4, 2, 1), nn.Tanh())


def discriminator() -> nn.Module:
  def down(cin, cout):
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]

  return nn.Sequential(
      nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2, True),
      *down(64, 128), *down(128, 256), *down(256, 512),
      nn.Conv2d(512, 1, 4, 1, 0), nn.Flatten())


def init_weights(m: nn.Module) -> None:
  if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
    nn.init.normal_(m.weight, 0.0, 0.02)
  elif isinstance(m, nn.BatchNorm2d):
    nn.init.ones_(m.weight)
    nn.init.zeros_(m.bias)


def benchmark(mode: str, batch: int, steps: int, warmup: int, device: str) -> dict:
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  fmt = torch.channels_last if mode == "bf16_channels_last" else torch.contiguous_format
  g, d = generator().to(device), discriminator().to(device)
  g.apply(init_weights)
  d.apply(init_weights)
  g, d = g.to(memory_format=fmt), d.to(memory_format=fmt)
  opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
  bce = nn.BCEWithLogitsLoss()
  real = (torch.rand(batch, 3, 64, 64, device=device) * 2 - 1).to(memory_format=fmt)
  ones = torch.ones(batch, 1, device=device)
  zeros = torch.zeros(batch, 1, device=device)
  autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                            enabled=mode == "bf16_channels_last")

  def step():
    z = torch.randn(batch, 100, 1, 1, device=device)
    with autocast:
      fake = g(z)  # the one G forward of the step
      loss_d = bce(d(real).float(), ones) + bce(d(fake.detach()).float(), zeros)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # G's update needs no gradients of D's weights: jaxgan's step does not compute them, and
    # PyTorch's DCGAN example does (about one D forward's worth of extra FLOPs, ~8 % of the
    # step), which made this reference slower than the same math needs.
    d.requires_grad_(False)
    with autocast:
      loss_g = bce(d(fake).float(), ones)  # through the updated D
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    d.requires_grad_(True)

  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  kind = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
  return {"impl": f"torch_{mode}", "torch": torch.__version__, "batch_size": batch,
          "step_ms": step_s * 1e3, "images_per_sec": batch / step_s, "device_kind": kind,
          "timed_steps": steps}


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--mode", default="fp32", choices=("fp32", "bf16_channels_last"))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  a = p.parse_args()
  print(json.dumps(benchmark(a.mode, a.batch, a.steps, a.warmup, a.device)))
