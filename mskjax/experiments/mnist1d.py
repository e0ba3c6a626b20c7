"""MNIST-1D: the MSK preconditioner (PGD) against tuned SGD+momentum and Adam.

The experiment program behind ``configs/mnist1d.py`` (and ``benchmarks/device.sh``);
importable, every piece a small function:

* :class:`MLP` (40 → 256 → 256 → 10, ReLU) and :class:`CNN` (three ``nn.Conv``, 32
  channels, kernel sizes 5, 3, 3, stride 2, 'SAME', ReLU; flatten 5·32 = 160 →
  ``nn.Dense(10)``), flax linen, standard parameterisation (the shared contract);
* :func:`make_tx` — ``optax.sgd(lr, momentum)``, ``optax.adam(lr)`` or
  ``optax.chain(optim.scale_by_msk(directions), optax.sgd(lr, momentum))`` (PGD: the
  data-free preconditioner P = I + Σ_{i≤k}(g_i/λ_i − 1) q_i q_iᵀ, DESIGN.md "Preconditioning
  real training", followed by the same momentum SGD as the baseline);
* :func:`build_directions` — the top-k directions of the empirical NTK of the network at
  initialisation (``optim.msk_directions`` on s ≤ n training points), timed: the
  preconditioner's one-off cost;
* :func:`train_run` — one training run through the one loop :func:`mskjax.train.fit`
  (mean softmax cross-entropy, minibatches of b points from the seeded shuffling iterator,
  test accuracy and loss every ``eval_every`` steps, training wall time with the
  compilation and the evaluations excluded);
* :func:`first_reach` — steps and wall time to a test accuracy from a run's curve.
"""
from __future__ import annotations

import functools
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mskjax import modifiers, optim
from mskjax import train as T

ARCHS = ("mlp", "cnn")
METHODS = ("sgd", "adam", "pgd")
REFERENCE_ACCURACY = {"mlp": 0.68, "cnn": 0.94}   # Greydanus & Kobak, standard set


class MLP(nn.Module):
  """40 → 256 → 256 → 10, ReLU, ``nn.Dense`` (standard parameterisation)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):
  """Input (n, 40, 1); Conv(32, k) stride 2 'SAME' + ReLU for k = 5, 3, 3; flatten → Dense(10)."""

  @nn.compact
  def __call__(self, x):
    for ks in (5, 3, 3):
      x = nn.relu(nn.Conv(32, (ks,), strides=2, padding="SAME")(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@functools.lru_cache(maxsize=None)
def model(arch: str) -> nn.Module:
  if arch not in ARCHS:
    raise ValueError(f"`arch` must be one of {ARCHS}; got {arch!r}.")
  return MLP() if arch == "mlp" else CNN()


def inputs(arch: str, x):
  """(n, 40) sequences → the model's input: as is (MLP) or with a channel axis (CNN)."""
  return x if arch == "mlp" else x[..., None]


@functools.lru_cache(maxsize=None)
def loss_fn(arch: str):
  """Mean softmax cross-entropy ``loss(params, (x, y), idx)`` for train.fit (one object per
  architecture, so every run of an architecture shares the compiled chunk)."""
  m = model(arch)

  def loss(params, batch, idx):
    logits = m.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
  return loss


@functools.lru_cache(maxsize=None)
def _eval_fn(arch: str):
  m = model(arch)

  @jax.jit
  def ev(params, x, y):
    logits = m.apply({"params": params}, x)
    return {"acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()}
  return ev


def init_params(arch: str, x, seed: int = 0):
  """Flax initialisation of the architecture (float32 parameters)."""
  return jax.jit(model(arch).init)(jax.random.PRNGKey(seed), x[:2])


def build_directions(arch: str, variables, x, *, k: int, subsample: Optional[int],
                     g: str = "flatten", seed: int = 0):
  """``optim.msk_directions`` at initialisation, timed (cold: compilation included).

  Returns ``(MSKDirections, seconds)``.
  """
  gfn = {"flatten": modifiers.flatten()}[g]
  t0 = time.perf_counter()
  d = optim.msk_directions(model(arch).apply, variables, x, gfn, int(k),
                           subsample=subsample, key=jax.random.PRNGKey(seed),
                           compute_beta=False)   # fixed lr grids: β (step rule) not needed
  jax.block_until_ready(d.directions)
  return d, time.perf_counter() - t0


def make_tx(method: str, lr: float, *, momentum: float = 0.9, directions=None):
  """The optimiser of a method (see the module docstring)."""
  if method == "sgd":
    return optax.sgd(lr, momentum=momentum)
  if method == "adam":
    return optax.adam(lr)
  if method == "pgd":
    if directions is None:
      raise ValueError("method 'pgd' needs `directions` (from build_directions).")
    return optax.chain(optim.scale_by_msk(directions), optax.sgd(lr, momentum=momentum))
  raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")


def train_run(arch: str, params, tx, x, y, x_test, y_test, *, batch_size: Optional[int],
              steps: int, eval_every: int, seed: int = 0, progress: bool = False,
              desc: str = "train") -> dict:
  """One run in :func:`mskjax.train.fit`; a JSON-able dict of its curve and costs.

  Diverged runs (cross-entropy above 50 or not finite) stop at once (``diverged``).
  """
  ev = _eval_fn(arch)
  res = T.fit(loss_fn(arch), params, tx, (x, y), steps=steps, batch_size=batch_size,
              seed=seed, evaluate=lambda st: ev(st.params, x_test, y_test),
              eval_every=eval_every, stop_above={"loss": 50.0}, progress=progress, desc=desc)
  h = res.history
  ran = int(res.state.step)
  acc = [float(a) for a in h["acc"]]
  return dict(
      diverged=res.stopped is not None, steps_run=ran,
      final_acc=acc[-1], max_acc=max(acc), final_test_loss=float(h["test_loss"][-1]),
      final_train_loss=float(res.records["loss"][-1]) if len(res.records["loss"]) else None,
      per_step_ms=1e3 * res.train_s / max(ran, 1), train_s=res.train_s,
      compile_s=res.compile_s, eval_s=res.eval_s,
      curve_step=[int(s) for s in h["step"]], curve_time=[float(t) for t in h["time"]],
      curve_acc=acc, curve_test_loss=[float(v) for v in h["test_loss"]])


def first_reach(rec: dict, target: float, offset_s: float = 0.0):
  """(steps, wall seconds + offset) of the first evaluation with accuracy >= target, or
  (None, None)."""
  for s, t, a in zip(rec["curve_step"], rec["curve_time"], rec["curve_acc"]):
    if a >= target - 1e-12:
      return int(s), float(t) + offset_s
  return None, None
