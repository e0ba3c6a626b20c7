"""configs/inr.py and its program mskjax/experiments/inr.py: data helpers against numpy
formulas, the method registry, divergence handling and a tiny end-to-end run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mskjax.experiments import inr as E
from mskjax.run import RunContext, load_config


def test_psnr_matches_numpy_formula():
  rng = np.random.default_rng(0)
  a, b = rng.random((7, 5)), rng.random((7, 5))
  want = 10 * math.log10(1.0 / np.mean((a - b) ** 2))
  assert float(E.psnr(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(want, rel=1e-6)
  want2 = 10 * math.log10(255.0 ** 2 / np.mean((a - b) ** 2))
  assert float(E.psnr(a, b, peak=255.0)) == pytest.approx(want2, rel=1e-6)


@pytest.mark.parametrize("h,w", [(4, 4), (6, 5), (1, 3)])
def test_checkerboard_split_is_disjoint_and_covering(h, w):
  m = E.checkerboard_mask(h, w)
  train, test = set(np.flatnonzero(m.ravel())), set(np.flatnonzero(~m.ravel()))
  assert not train & test and len(train | test) == h * w
  # no two horizontally/vertically adjacent pixels are both training pixels
  assert not np.any(m[:, 1:] & m[:, :-1]) and not np.any(m[1:] & m[:-1])
  assert abs(len(train) - len(test)) <= 1


def test_fourier_features_match_numpy_formula():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (9, 2)).astype(np.float32)
  B = E.fourier_matrix(5, 3.0, seed=2)
  got = np.asarray(E.fourier_features(jnp.asarray(x), B))
  proj = 2 * np.pi * x.astype(np.float64) @ B.astype(np.float64).T
  want = np.concatenate([np.cos(proj), np.sin(proj)], 1)
  assert got.shape == (9, 10)
  np.testing.assert_allclose(got, want, atol=2e-5)   # float32 arguments of size ~50
  # B is N(0, σ²), seeded
  np.testing.assert_array_equal(B, E.fourier_matrix(5, 3.0, seed=2))
  big = E.fourier_matrix(20000, 3.0, seed=0)
  assert np.std(big) == pytest.approx(3.0, rel=0.02)   # 40k samples: 1 % std error


def test_pixel_coords_and_image():
  c = E.pixel_coords(3, 2)
  assert c.shape == (6, 2) and c.dtype == np.float32
  np.testing.assert_allclose(c[1], [-1, 1]) and np.testing.assert_allclose(c[2], [0, -1])
  img = E.load_image("china", 16, "gray")
  rgb = E.load_image("flower", 16, "rgb")
  assert img.shape == (16, 16) and rgb.shape == (16, 16, 3)
  assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.05
  with pytest.raises(ValueError, match="image"):
    E.load_image("lena", 16)


def test_models_shapes():
  x = jnp.zeros((3, 2), jnp.float32)
  for kind in E.MODELS:
    m = E.make_model(kind, width=8, depth=2, out=3)
    v = m.init(jax.random.PRNGKey(0), x)
    assert m.apply(v, x).shape == (3, 3)
  with pytest.raises(ValueError, match="models"):
    E.make_model("tanh", width=8, depth=2, out=1)


def _tiny_setup(lr_grids=None):
  cfg = load_config("configs/inr.py:quick")
  img = E.load_image("china", 8)
  mask = E.checkerboard_mask(8, 8)
  x = jnp.asarray(E.pixel_coords(8, 8)[mask.ravel()])
  y = jnp.asarray(img.reshape(-1, 1)[mask.ravel()])
  model = E.make_model("relu", width=16, depth=2, out=1)
  v = model.init(jax.random.PRNGKey(0), x)
  from mskjax import iga
  groups = iga.patch_groups(8, 8, 4, mask=mask)
  cache = {}

  def directions():
    if "d" not in cache:
      cache["d"] = E.build_directions(model.apply, v, x, k=4, subsample=None, seed=0)
    return cache["d"]

  def measured():
    if "eta" not in cache:
      cache["eta"] = E.measure_step(model.apply, directions()[0], v["params"], x, y)
    return cache["eta"]
  return E.Setup(model.apply, v, x, y, groups, cfg, directions, measured), model


@pytest.mark.slow     # seven compilations: ~15 s unloaded, > 1 min on the shared 2 cores
def test_every_method_trains():
  setup, model = _tiny_setup()
  x, y = setup.x, setup.y
  for name in setup.config.methods:
    m = E.METHODS[name](setup, 1e-2)
    rec = E.train(m, model.apply, setup.variables["params"], x, y, x, y, steps=10,
                  eval_every=5)
    assert rec["curve_step"] == [0, 5, 10] and not rec["diverged"], name
    assert rec["curve_psnr"][-1] > rec["curve_psnr"][0], name      # it learns
    # step-0 PSNR: an independent evaluation of the initial network
    p0 = model.apply(setup.variables, x)
    want = 10 * math.log10(1 / float(np.mean((np.asarray(p0) - np.asarray(y)) ** 2)))
    assert rec["curve_psnr"][0] == pytest.approx(want, rel=1e-5)


def test_divergence_is_recorded_not_raised():
  setup, model = _tiny_setup()
  x, y = setup.x, setup.y
  bad = E.Method(optax.sgd(1e4), E.mse_half(model.apply))
  rec = E.train(bad, model.apply, setup.variables["params"], x, y, x, y, steps=20,
                eval_every=5)
  assert rec["diverged"] and math.isnan(rec["psnr"])
  assert math.isnan(E.at_time(rec, 1e9))


def test_learning_rates_hold_factors_of_the_measured_step():
  setup, model = _tiny_setup()
  grid = E.learning_rates(setup, "msk")
  eta, secs = setup.measured()
  f = setup.config.rule_factors[0]
  assert grid[0][0] == f"meas×{f:g}" and grid[0][1] == pytest.approx(f * eta)
  assert len(grid) == len(setup.config.rule_factors) + len(setup.config.grids.msk)
  assert [lr for _, lr in E.learning_rates(setup, "adam")] == list(setup.config.grids.adam)
  # the measured step is 0.75/λ̂ of the preconditioned Hessian: P-GD at 2.67× that step sits
  # at the quadratic edge, and at a tenth of it the loss must fall (a step that small is stable)
  m = E.METHODS["msk"](setup, 0.1 * eta)
  assert m.one_off_s >= secs > 0                # directions + measurement are one-off costs
  rec = E.train(m, model.apply, setup.variables["params"], setup.x, setup.y, setup.x,
                setup.y, steps=10, eval_every=5)
  assert not rec["diverged"] and rec["curve_psnr"][-1] > rec["curve_psnr"][0]


def test_model_variants_expand_fourier_sigmas():
  got = E.model_variants(("relu", "relu_ff"), (1.0, 3.0))
  assert got == [("relu", "relu", 0.0), ("relu_ff1", "relu_ff", 1.0),
                 ("relu_ff3", "relu_ff", 3.0)]
  with pytest.raises(ValueError, match="models"):
    E.model_variants(("tanh",), (1.0,))


def test_summary_target_and_time_to_target():
  def rec(psnrs, times, lr=1.0, diverged=False):
    return dict(diverged=diverged, psnr=psnrs[-1], train_psnr=psnrs[-1], lr=lr,
                curve_psnr=psnrs, curve_time=times, one_off_s=times[0],
                train_s=times[-1] - times[0], s_per_step=0.01)
  recs = {("adam", "a", 0): rec([5.0, 10.0, 20.0], [0.0, 5.0, 10.0]),
          ("adam", "a", 1): rec([5.0, 12.0, 22.0], [0.0, 4.0, 8.0]),
          ("sgd", "s", 0): rec([5.0, 8.0, 12.0], [0.0, 3.0, 6.0]),
          ("sgd", "s", 1): rec([5.0, 8.0, 14.0], [0.0, 3.0, 6.0]),
          ("msk", "m", 0): rec([5.0, 21.0, 25.0], [1.0, 2.0, 3.0]),
          ("msk", "m", 1): rec([5.0, 20.0, 25.0], [1.0, 2.0, 3.0])}
  best = {"adam": "a", "sgd": "s", "msk": "m"}
  seed_rows, rows, budget, _, target = E.summarize(recs, ("adam", "sgd", "msk"), (0, 1),
                                                   best, "img", "relu")
  assert target == 21.0 and budget == 3.0          # adam's mean final; msk's 3 s total
  by = {r["method"]: r for r in rows}
  assert by["msk"]["best_baseline"] == "adam"
  assert by["msk"]["time_to_target_s"] == pytest.approx(2.5)     # 2.0 (seed 0), 3.0 (seed 1)
  # adam's seed 0 ends at 20 < 21: no baseline reaches the target on every seed, so there
  # is no fastest baseline and no speed-up to claim
  assert by["msk"]["fastest_baseline"] is None and math.isnan(by["msk"]["speedup_vs_fastest"])
  assert by["sgd"]["seeds_reaching_target"] == 0 and math.isnan(by["sgd"]["time_to_target_s"])
  assert by["adam"]["psnr_at_budget"] == pytest.approx(5.0)       # nothing evaluated by 3 s
  assert len(seed_rows) == 6 and {r["seed"] for r in seed_rows} == {0, 1}


@pytest.mark.parametrize("times,fastest,speedup", [
    # (adam, sgd, muon, msk) mean times to target; NaN = not reached on every seed
    ((9.0, 6.0, float("nan"), 2.0), "sgd", 3.0),     # the fastest, not the best, baseline
    ((9.0, float("nan"), float("nan"), 12.0), "adam", 0.75),
    ((float("nan"),) * 3 + (2.0,), None, float("nan")),
])
def test_speedup_is_against_the_fastest_baseline(times, fastest, speedup):
  rows = [dict(method=m, time_to_target_s=t) for m, t in zip(("adam", "sgd", "muon", "msk"),
                                                             times)]
  by = {r["method"]: r for r in E.speedups_vs_fastest(rows)}
  assert by["msk"]["fastest_baseline"] == fastest
  if fastest is None:
    assert math.isnan(by["msk"]["speedup_vs_fastest"])
  else:
    assert by["msk"]["speedup_vs_fastest"] == pytest.approx(speedup)
    assert by[fastest]["speedup_vs_fastest"] == pytest.approx(1.0)
  assert math.isnan(by["muon"]["speedup_vs_fastest"])


def test_at_time_reads_the_curve():
  rec = dict(diverged=False, curve_time=[5.0, 6.0, 7.0], curve_psnr=[10.0, 12.0, 14.0])
  assert E.at_time(rec, 6.5) == 12.0 and E.at_time(rec, 1.0) == 10.0
  assert E.at_time(rec, 100.0) == 14.0


def test_quick_config_is_resolved_inside_and_small():
  s = load_config("configs/inr.py:quick")
  full = load_config("configs/inr.py")
  assert s.steps <= 100 and s.width <= 64 and full.steps >= 500
  assert set(full.methods) <= set(E.METHODS) and set(full.methods) <= set(full.grids)
  assert len(full.seeds) == 3


@pytest.mark.slow   # ~1 min; CI's smoke run executes configs/inr.py:quick end to end
def test_tiny_run_writes_results_curves_and_plots(tmp_path):
  import csv
  cfg = load_config("configs/inr.py:quick")
  cfg.images = (("china", "gray", 8),)
  cfg.width, cfg.depth, cfg.steps, cfg.eval_every = 8, 1, 4, 2
  cfg.methods = ("adam", "msk")   # IGA end to end: tests/test_iga.py and the slow test above
  cfg.seeds = (0, 1)          # the second seed reruns each method at its grid's best step
  cfg.iga_patch, cfg.iga_k, cfg.msk_k, cfg.msk_subsample = 4, 2, 2, 0
  ctx = RunContext(tmp_path, cfg, show_progress=False)
  E.run(cfg, ctx)
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))   # one row per method × seed
  assert [(r["method"], r["seed"]) for r in rows] == [(m, str(s)) for m in cfg.methods
                                                      for s in cfg.seeds]
  assert all(np.isfinite(float(r["psnr"])) for r in rows)
  msk = rows[len(cfg.seeds) * list(cfg.methods).index("msk")]
  assert float(msk["one_off_s"]) > 0 and float(rows[0]["one_off_s"]) == 0
  summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
  assert [r["method"] for r in summary] == list(cfg.methods)
  curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
  assert len(curves) == len(cfg.methods) * len(cfg.seeds) * 3     # steps 0, 2, 4
  assert (tmp_path / "psnr_china_gray_8_relu.png").exists()
