"""A straightforward Flax Linen port of DCGAN-64, the baseline jaxgan's step is compared with.

What a user would write first from the PyTorch example: nn.ConvTranspose / nn.Conv, BatchNorm,
BCE, optax Adam 2e-4 / 0.5, one jitted step (D update on real + fake, then G update through the
updated D) that runs G forward twice (once for D, again for G's gradient), float32 images in, no
buffer donation. Same math as jaxgan's DCGAN (same layer shapes and initialisation).
`--reuse_g_forward` runs G forward once and reuses it for G's update (jax.vjp), as jaxgan does:
the one-G-forward lever in isolation.

  python benchmarks/flax_straightforward.py --batch 64 --dtype float32 --steps 20 [--reuse_g_forward]
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgan import throughput

INIT = nn.initializers.normal(0.02)


class G(nn.Module):
  dtype: jnp.dtype = jnp.float32
  width: int = 64  # ngf (the benchmark's 64; tests shrink it)

  @nn.compact
  def __call__(self, z, train=True):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    w = self.width
    h = nn.Dense(4 * 4 * 8 * w, use_bias=False, kernel_init=INIT, dtype=self.dtype)(z)
    h = nn.relu(bn()(h.reshape(-1, 4, 4, 8 * w)))
    for c in (4 * w, 2 * w, w):
      h = nn.relu(bn()(nn.ConvTranspose(c, (4, 4), (2, 2), "SAME", use_bias=False, kernel_init=INIT,
                                        dtype=self.dtype)(h)))
    return jnp.tanh(nn.ConvTranspose(3, (4, 4), (2, 2), "SAME", kernel_init=INIT, dtype=self.dtype)(h)
                    .astype(jnp.float32))


class D(nn.Module):
  dtype: jnp.dtype = jnp.float32
  width: int = 64  # ndf

  @nn.compact
  def __call__(self, x, train=True):
    h = x.astype(self.dtype)
    for i, c in enumerate(self.width * m for m in (1, 2, 4, 8)):
      h = nn.Conv(c, (4, 4), (2, 2), "SAME", use_bias=i == 0, kernel_init=INIT, dtype=self.dtype)(h)
      if i:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    return nn.Dense(1, kernel_init=INIT, dtype=self.dtype)(h.reshape(h.shape[0], -1))[:, 0].astype(jnp.float32)


def bce(logits, target):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def make(batch: int, dtype, reuse_g_forward: bool = False, width: int = 64):
  """(state, jitted step). `reuse_g_forward`: run G forward once and reuse it for G's update
  (jax.vjp), as jaxgan does: the one-G-forward lever, isolated in the port (same function).
  `width`: ngf = ndf (64, as benchmarked; tests use less)."""
  g, d = G(dtype, width), D(dtype, width)
  tx_g, tx_d = optax.adam(2e-4, 0.5), optax.adam(2e-4, 0.5)
  kg, kd = jax.random.split(jax.random.PRNGKey(0))
  gv = g.init(kg, jnp.zeros((2, 100)), train=False)
  dv = d.init(kd, jnp.zeros((2, 64, 64, 3)), train=False)
  state = dict(gp=gv["params"], gs=gv["batch_stats"], dp=dv["params"], ds=dv["batch_stats"],
               go=tx_g.init(gv["params"]), do=tx_d.init(dv["params"]))

  @jax.jit
  def step(state, real, key):
    z = jax.random.normal(key, (batch, 100))
    g_forward = lambda gp: g.apply({"params": gp, "batch_stats": state["gs"]}, z,
                                   mutable=["batch_stats"])
    if reuse_g_forward:
      fake, g_vjp, g_vars = jax.vjp(g_forward, state["gp"], has_aux=True)
      g_stats = g_vars["batch_stats"]
    else:
      fake, _ = g_forward(state["gp"])

    def d_loss(dp):
      out, s = d.apply({"params": dp, "batch_stats": state["ds"]}, real, mutable=["batch_stats"])
      out_f, s = d.apply({"params": dp, "batch_stats": s["batch_stats"]}, jax.lax.stop_gradient(fake),
                         mutable=["batch_stats"])
      return bce(out, 1.0) + bce(out_f, 0.0), s["batch_stats"]

    (_, ds), grads = jax.value_and_grad(d_loss, has_aux=True)(state["dp"])
    upd, do = tx_d.update(grads, state["do"], state["dp"])
    dp = optax.apply_updates(state["dp"], upd)

    def g_loss(gp):  # G forward again, as a first port does
      f, s = g_forward(gp)
      out, _ = d.apply({"params": dp, "batch_stats": ds}, f, mutable=["batch_stats"])
      return bce(out, 1.0), s["batch_stats"]

    if reuse_g_forward:  # dL/dfake through the updated D, then back through the saved G forward
      fake_loss = lambda f: bce(d.apply({"params": dp, "batch_stats": ds}, f,
                                        mutable=["batch_stats"])[0], 1.0)
      (grads,) = g_vjp(jax.grad(fake_loss)(fake))
      gs = g_stats
    else:
      (_, gs), grads = jax.value_and_grad(g_loss, has_aux=True)(state["gp"])
    upd, go = tx_g.update(grads, state["go"], state["gp"])
    return dict(gp=optax.apply_updates(state["gp"], upd), gs=gs, dp=dp, ds=ds, go=go, do=do)

  return state, step


def ready(batch: int, dtype: str, warmup: int = 3, reuse_g_forward: bool = False
          ) -> Callable[[], None]:
  """`call()` runs one step of the port on device-resident data and waits for it, carrying its
  own state; compiled and warmed up before it is returned."""
  state, step = make(batch, {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype],
                     reuse_g_forward)
  real = jax.random.uniform(jax.random.PRNGKey(1), (batch, 64, 64, 3), minval=-1.0, maxval=1.0)
  key = jax.random.PRNGKey(2)
  holder = [state]

  def call() -> None:
    holder[0] = jax.block_until_ready(step(holder[0], real, key))

  for _ in range(warmup):
    call()
  return call


def row(batch: int, dtype: str, call_times: list[float], reuse_g_forward: bool = False) -> dict:
  step_s = statistics.median(call_times)
  return {"impl": "flax_straightforward" + ("+reuse_g_forward" if reuse_g_forward else ""),
          "batch_size": batch, "dtype": dtype,
          "step_ms": step_s * 1e3, "images_per_sec": batch / step_s,
          "device_kind": jax.devices()[0].device_kind, "timed_steps": len(call_times)}


def benchmark(batch: int, dtype: str, steps: int = 20, warmup: int = 3,
              reuse_g_forward: bool = False) -> dict:
  (times,) = throughput.time_alternately([ready(batch, dtype, warmup, reuse_g_forward)], steps)
  return row(batch, dtype, times, reuse_g_forward)


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--reuse_g_forward", action="store_true")
  a = p.parse_args()
  print(json.dumps(benchmark(a.batch, a.dtype, a.steps, reuse_g_forward=a.reuse_g_forward)))
