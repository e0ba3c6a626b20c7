"""mskjax/experiments/digits.py (the program of configs/digits.py): the chunked training
helper measures what the table reports.

The CI smoke run only checks that the config runs; this checks, on a linear model with a
closed-form GD iteration, that the per-step residual curve, the step at which each
tolerance is first met and the test metrics of the parameter snapshot taken at that step
are the right ones (including a budget that is not a multiple of the chunk).
"""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mskjax.experiments import digits as cfg
from mskjax.run import RunContext


def test_train_helper_matches_closed_form_gd(tmp_path):
  rng = np.random.default_rng(0)
  X = rng.standard_normal((12, 5))
  Y = rng.standard_normal((12, 3))
  Xt, Yt = rng.standard_normal((7, 5)), np.eye(3)[rng.integers(0, 3, 7)]
  f = lambda w, x: x @ w
  eta = 0.5 / np.linalg.eigvalsh(X.T @ X)[-1]
  steps, tols = 37, (0.9, 0.8)
  ctx = RunContext(tmp_path, None, show_progress=False)
  rec = cfg.train_with_tols(f, jnp.zeros((5, 3)), jnp.asarray(X), jnp.asarray(Y), jnp.asarray(Xt),
                   jnp.asarray(Yt), lambda p, y: 0.5 * jnp.sum((p - y) ** 2),
                   optax.sgd(eta), steps, 10, tols, "t", ctx)
  w, res, ws = np.zeros((5, 3)), [], []
  for _ in range(steps):
    res.append(np.linalg.norm(X @ w - Y) / np.linalg.norm(Y))
    ws.append(w)
    w = w - eta * X.T @ (X @ w - Y)
  res = np.asarray(res)
  np.testing.assert_allclose(rec["curve_res"], res[rec["curve_t"]], rtol=1e-10)
  assert rec["curve_t"][-1] == steps - 1 and rec["steps_run"] == steps
  np.testing.assert_allclose(rec["final_res"], np.linalg.norm(X @ w - Y) / np.linalg.norm(Y),
                             rtol=1e-10)
  for tol in tols:
    t = int(np.nonzero(res < tol)[0][0])
    assert rec[f"steps@{tol}"] == t
    acc, mse = cfg.class_metrics(Xt @ ws[t], Yt)
    assert rec[f"acc@{tol}"] == acc
    np.testing.assert_allclose(rec[f"mse@{tol}"], mse, rtol=1e-10)
  acc, mse = cfg.class_metrics(Xt @ w, Yt)
  assert rec["acc_final"] == acc
  assert np.all(np.diff(rec["curve_time"]) >= 0)


@pytest.mark.parametrize("grid,target,widen,best,tried", [
    ((0.01, 0.03, 0.1), 0.03, 2, 0.03, (0.01, 0.03, 0.1)),          # best inside: as given
    ((0.01, 0.03, 0.1), 0.9, 2, 0.9, (0.01, 0.03, 0.1, 0.3, 0.9)),   # grown up to the best
    ((0.01, 0.03, 0.1), 1e-4, 2, 0.00111111, (0.00111111, 0.00333333, 0.01, 0.03, 0.1)),
    ((0.01, 0.03, 0.1), 0.9, 0, 0.1, (0.01, 0.03, 0.1)),             # widen=0: the grid
    ((0.01, 0.03, 0.1), 0.9, 1, 0.3, (0.01, 0.03, 0.1, 0.3)),        # stops after `widen`
])
def test_tune_grid_grows_past_the_end_holding_the_best(grid, target, widen, best, tried):
  from mskjax.experiments._grid import tune_grid
  from mskjax.experiments.digits import _times3
  seen = []

  def try_lr(lr):                      # a unimodal score with its minimum at `target`
    seen.append(lr)
    return abs(np.log(lr / target)), False
  assert tune_grid(try_lr, grid, widen, _times3, log=lambda s: None) == pytest.approx(
      best, rel=1e-5)
  np.testing.assert_allclose(sorted(seen), tried, rtol=1e-5)


def test_tune_grid_never_grows_past_a_diverged_value():
  from mskjax.experiments._grid import tune_grid
  from mskjax.experiments.digits import _times3
  # all but the smallest diverge: the best is that smallest value; widening goes down only
  scores = {0.01: ((1, 5.0), False), 0.03: ((2, np.inf), True), 0.1: ((2, np.inf), True)}
  seen = []

  def try_lr(lr):
    seen.append(lr)
    return scores.get(round(lr, 8), ((1, lr), False))      # smaller: better
  assert tune_grid(try_lr, (0.01, 0.03, 0.1), 2, _times3, log=lambda s: None) < 0.01
  assert max(seen) == 0.1 and len(seen) == 5
