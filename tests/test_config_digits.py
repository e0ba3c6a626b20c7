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
