"""Directions: explicit Jacobian vs matrix-free, against a naive jacrev + eigh and training.

Command::

  python -m benchmarks.bench_directions            # MNIST-1D MLP (s = 500, k = 30), CNN (s = 250, k = 20)
  python -m benchmarks.bench_directions --quick    # smaller s, for a smoke run

Ratios in one process (float32, MNIST-1D inputs): ``msk_directions`` (default ``method='auto'``,
MSE and softmax cross-entropy) against (a) a naive explicit Jacobian (``jax.jacrev`` of the
whole subsample in 5 blocks of points, ``K = J Jᵀ``, ``numpy.linalg.eigh``) on the same points
and (b) 200 training steps (b = 128, optax SGD, the jitted step called from a Python loop);
then a refresh (``init_vectors`` = the directions at init) at the parameters after those 200
steps against a cold build there. Each is timed once (a shared machine: a
bounded run); the naive route and the first ``msk_directions`` call include compilation,
the cold/warm builds at the trained parameters and the training steps are compiled. Accuracy: max relative error of λ₁..λ_{k+1} against the
naive dense eigh of the same kernel.
"""
import argparse
import time

import numpy as np


def _models():
  import flax.linen as nn

  class CNN(nn.Module):
    """(40, 1) → 3 × Conv(32, 5, 'SAME') + ReLU → flatten → Dense(10): 23,306 parameters."""

    @nn.compact
    def __call__(self, x):
      for _ in range(3):
        x = nn.relu(nn.Conv(32, (5,), padding="SAME")(x))
      return nn.Dense(10)(x.reshape(x.shape[0], -1))

  from mskjax.experiments import mnist1d
  return {"mlp": mnist1d.model("mlp"), "cnn": CNN()}


def _timed(f, repeat=1):
  t = time.perf_counter()
  out = f()
  first = time.perf_counter() - t
  best = first
  for _ in range(repeat):
    t = time.perf_counter()
    out = f()
    best = min(best, time.perf_counter() - t)
  return out, first, best


def d_method(model, xs, k):
  """What ``method='auto'`` picks here (float32, default budget)."""
  import jax
  from mskjax import directions
  p = model.init(jax.random.PRNGKey(1), xs[:1])["params"]
  f = lambda q, xx: model.apply({"params": q}, xx)
  P = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(p))
  return directions.choose_jacobian(xs.shape[0] * 10, P, 10, k + 11,
                                  directions._forward_flops(f, p, xs[:1]), 4, 1 << 30)


def run_case(arch, model, xtr, ytr, s, k, log=print):
  import jax
  import jax.numpy as jnp
  import optax
  from mskjax import modifiers, optim

  x = xtr if arch == "mlp" else xtr[..., None]
  variables = model.init(jax.random.PRNGKey(1), x[:1])
  params = variables["params"]
  P = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(params))
  g = modifiers.flatten()
  rng = np.random.default_rng(0)
  idx = np.sort(rng.choice(x.shape[0], s, replace=False))
  xs = x[idx]
  c = 10

  # (a) naive: jacrev over 5 blocks of points, K = J Jᵀ, numpy eigh
  f_flat = lambda p, xb: model.apply({"params": p}, xb).reshape(-1)
  jac = jax.jit(jax.jacrev(f_flat))

  def naive():
    blocks = np.array_split(np.arange(s), 5)
    J = np.concatenate([np.concatenate([np.asarray(l).reshape(len(b) * c, -1) for l in
                                        jax.tree.leaves(jac(params, xs[b]))], axis=1)
                        for b in blocks], axis=0)
    K = J @ J.T
    return np.linalg.eigh(K.astype(np.float64))[0][::-1]
  lam, t_naive, _ = _timed(naive, repeat=0)

  def ours(loss="mse", v=variables, **kw):
    return optim.msk_directions(model.apply, v, xs, g, k, loss=loss, compute_beta=False,
                                **kw)
  d, t_ours1, _ = _timed(ours, repeat=0)
  err = float(np.max(np.abs(np.r_[np.asarray(d.values), float(d.next_value)] - lam[:k + 1])
                     / lam[:k + 1]))
  dce, t_ce, _ = _timed(lambda: ours("softmax_cross_entropy"), repeat=0)

  # (b) 200 SGD steps, b = 128, jitted step in a Python loop
  tx = optax.sgd(1e-2)

  @jax.jit
  def step(p, st, xb, yb):
    l, gr = jax.value_and_grad(lambda q: optax.softmax_cross_entropy(
        model.apply({"params": q}, xb), yb).mean())(p)
    up, st = tx.update(gr, st, p)
    return optax.apply_updates(p, up), st, l

  def train(p=params):
    st = tx.init(p)
    for i in range(200):
      b = (np.arange(128) + 128 * i) % x.shape[0]
      p, st, _ = step(p, st, x[b], ytr[b])
    jax.block_until_ready(p)
    return p
  step(params, tx.init(params), x[:128], ytr[:128])          # compile once
  p200, t_train, _ = _timed(train, repeat=0)

  # refresh at the trained parameters: warm (from d at init) vs cold there
  v200 = {"params": p200}
  cold, t_cold, _ = _timed(lambda: ours(v=v200), repeat=0)       # compiled by now
  warm, t_warm, _ = _timed(lambda: ours(v=v200, init_vectors=d), repeat=0)
  t_ours = t_cold
  dvals = np.r_[np.asarray(cold.values), float(cold.next_value)]
  wvals = np.r_[np.asarray(warm.values), float(warm.next_value)]
  werr = float(np.max(np.abs(wvals - dvals) / dvals))
  log(f"{arch}: method {d_method(model, xs, k)}, #params {P}, s = {s}, c = {c}, k = {k}, s·c·P·4 = {s * c * P * 4 / 2**20:.0f} MiB")
  log(f"  naive jacrev + eigh      {t_naive:7.2f} s (one call, compilation included)")
  log(f"  msk_directions (mse)     {t_ours:7.2f} s (at the trained θ, compiled; first call "
      f"at init {t_ours1:.2f} s)  "
      f"ratio {t_ours / t_naive:.2f}x naive, {t_ours / t_train:.2f}x 200 steps; "
      f"max rel err λ₁..λ_k+1 vs naive {err:.1e}")
  log(f"  msk_directions (CE)      {t_ce:7.2f} s  "
      f"λ₁ {float(dce.values[0]):.3g} vs mse λ₁ {float(d.values[0]):.3g}")
  log(f"  200 SGD steps (b = 128)  {t_train:7.2f} s (compiled)")
  log(f"  after 200 steps: cold {t_cold:.2f} s, warm refresh {t_warm:.2f} s "
      f"(ratio {t_warm / t_cold:.2f}); max rel diff λ₁..λ_k+1 warm vs cold {werr:.1e}")
  return dict(naive=t_naive, ours=t_ours, ce=t_ce, train=t_train, cold=t_cold, warm=t_warm,
              err=err, werr=werr)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="s = 100 / 50 (smoke run)")
  ap.add_argument("--arch", default="cnn,mlp")
  args = ap.parse_args(argv)
  import os
  print(os.popen("uptime").read().strip())
  import jax
  from mskjax import data
  ds = data.load_mnist1d(num_samples=1000)
  xtr = np.asarray(ds.x_train, np.float32)
  ytr = np.asarray(jax.nn.one_hot(np.asarray(ds.y_train).reshape(-1), 10)
                   if np.asarray(ds.y_train).ndim == 1 else ds.y_train, np.float32)
  models = _models()
  sizes = {"mlp": (500, 30), "cnn": (250, 20)}
  if args.quick:
    sizes = {"mlp": (100, 10), "cnn": (50, 10)}
  out = {}
  for arch in args.arch.split(","):
    s, k = sizes[arch]
    out[arch] = run_case(arch, models[arch], xtr, ytr, s, k)
  print(os.popen("uptime").read().strip())
  return out


if __name__ == "__main__":
  main()
