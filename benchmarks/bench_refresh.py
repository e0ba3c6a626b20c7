"""Refreshing the preconditioner: cold `msk_directions` vs warm-started from the previous ones.

Command::

  python -m benchmarks.bench_refresh            # MNIST-1D-sized MLP 40-256-256-10, s = 1000

The parameters are perturbed by 2 % of each leaf's scale (as after some training); the
reference is a cold solve at tol 1e-6. Reported: wall time, max residual ‖K v − λ v‖/λ₁ and
the max eigenvalue error relative to λ₁, for a cold and a warm start at the same budget.
"""
import argparse
import time

import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=4000)
  ap.add_argument("--subsample", type=int, default=1000)
  ap.add_argument("--k", type=int, default=30)
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from mskjax import modifiers, optim
  from mskjax.experiments import mnist1d

  m = mnist1d.model("mlp")   # the MNIST-1D MLP 40-256-256-10
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (args.n, 40)), np.float32)
  v0 = m.init(jax.random.PRNGKey(1), x[:1])
  v1 = jax.tree.map(lambda a: a + 0.02 * jnp.std(a) * jax.random.normal(
      jax.random.PRNGKey(2), a.shape, a.dtype), v0)
  g = modifiers.flatten()
  common = dict(subsample=args.subsample, compute_beta=False, float64=False)

  def solve(v, **kw):
    t = time.perf_counter()
    d = optim.msk_directions(m.apply, v, x, g, args.k, **common, **kw)
    return d, time.perf_counter() - t

  d0, _ = solve(v0)
  ref, t_ref = solve(v1)
  print(f"{'start':>6} {'depth':>5} {'cycles':>6} {'time s':>7} {'max res':>9} {'max |dλ|/λ₁':>12}")
  print(f"{'cold':>6} {6:>5} {'≤10':>6} {t_ref:7.1f} {float(ref.residuals.max()):9.2e} {'(reference)':>12}")
  for depth, cycles in ((0, 1), (1, 1)):
    for name, init in (("cold", None), ("warm", d0)):
      d, t = solve(v1, init_vectors=init, depth=depth, max_cycles=cycles)
      err = float(np.max(np.abs(np.asarray(d.values) - np.asarray(ref.values))) / ref.values[0])
      print(f"{name:>6} {depth:>5} {cycles:>6} {t:7.1f} {float(d.residuals.max()):9.2e} {err:12.2e}")


if __name__ == "__main__":
  main()
