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
  return E.Setup(model.apply, v, x, y, groups, cfg, directions), model


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


def test_learning_rates_hold_rule_factors():
  from mskjax import optim
  setup, _ = _tiny_setup()
  grid = E.learning_rates(setup, "msk")
  rule = optim.stable_learning_rate(setup.directions()[0], batch_size=int(setup.x.shape[0]))
  f = setup.config.rule_factors[0]
  assert grid[0][0] == f"rule×{f:g}" and grid[0][1] == pytest.approx(f * rule)
  assert len(grid) == len(setup.config.rule_factors) + len(setup.config.grids.msk)
  assert [lr for _, lr in E.learning_rates(setup, "adam")] == list(setup.config.grids.adam)


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
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [r["method"] for r in rows] == list(cfg.methods)
  assert all(np.isfinite(float(r["psnr"])) for r in rows)
  msk = rows[list(cfg.methods).index("msk")]
  assert float(msk["one_off_s"]) > 0 and float(rows[0]["one_off_s"]) == 0
  curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
  assert len(curves) == len(cfg.methods) * len(cfg.seeds) * 3     # steps 0, 2, 4
  assert (tmp_path / "psnr_china_gray_8_relu.png").exists()
