"""configs/mnist1d.py and its program mskjax/experiments/mnist1d.py: architectures, the method
registry, the training run through train.fit or a Python loop, and the read-outs (tiny data)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mskjax import optim
from mskjax import train as T
from mskjax.experiments import mnist1d as B
from mskjax._config import apply_overrides, load_config_module, validate_config
from mskjax.run import ConfigError, load_config


@pytest.mark.parametrize("arch,n_params", [
    # MLP: 40·256+256 + 256·256+256 + 256·10+10; CNN: 5·1·32+32 + 3·32·32+32 (×2) + 160·10+10
    ("mlp", 40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
    ("cnn", 5 * 32 + 32 + 2 * (3 * 32 * 32 + 32) + 160 * 10 + 10)])
def test_architectures_are_the_shared_contract(arch, n_params):
  x = B.inputs(arch, jnp.zeros((3, 40), jnp.float32))
  v = B.init_params(arch, x)
  assert sum(a.size for a in jax.tree.leaves(v)) == n_params
  assert B.model(arch).apply(v, x).shape == (3, 10)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))


def _toy():
  """A pytree with a matrix, a bias and a conv kernel (width, in, out); its gradient; and one
  unit direction q (float64 numpy) for the PGD methods."""
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((6, 4))),
            "b": jnp.asarray(rng.standard_normal(4)),
            "conv": jnp.asarray(rng.standard_normal((3, 2, 5)))}
  grads = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
  u, _ = np.linalg.qr(rng.standard_normal((6, 4)))
  v, _ = np.linalg.qr(rng.standard_normal((4, 4)))
  grads["w"] = jnp.asarray((u * np.array([4.0, 2.0, 1.0, 0.5])) @ v.T)   # singular values 4..½
  q = jax.tree.map(lambda a: rng.standard_normal(a.shape), params)
  norm = np.sqrt(sum(np.sum(v ** 2) for v in jax.tree.leaves(q)))
  q = jax.tree.map(lambda v: v / norm, q)
  # One direction, λ = 4 → g = 1: P = I + (1/4 − 1) q qᵀ.
  d = optim.MSKDirections(jax.tree.map(lambda v: jnp.asarray(v)[None], q), jnp.array([4.0]),
                          jnp.array([1.0]), jnp.array(1.0))
  return params, grads, q, d


def _flat(t):
  return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(t)])


@pytest.mark.parametrize("method", sorted(B.METHODS))
def test_every_registered_method_makes_a_finite_first_update(method):
  params, grads, _, d = _toy()
  tx = B.make_tx(method, 0.1, directions=d if B.METHODS[method].uses_directions else None)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  u = _flat(updates)
  assert np.all(np.isfinite(u)) and np.linalg.norm(u) > 0


def test_first_updates_match_their_closed_forms():
  """First step: SGD (momentum buffer empty) −lr·g; Adam −lr·sign(g) (bias-corrected, up to
  eps); PGD −lr·P g with P = I − ¾ q qᵀ (numpy); PGD with momentum: −lr·P g, then
  −1.9·lr·P g; PGD+Adam −lr·sign(P g); Muon's AdamW
  branch (the bias; the conv kernel with muon_conv='adam') Nesterov Adam's first step, and its
  matrices orthogonalised (the update of w has all singular values alike, unlike g's)."""
  params, grads, q, d = _toy()
  lr, g = 0.1, _flat(grads)
  qf = _flat(q)
  pg = g - 0.75 * qf * (qf @ g)
  tol = dict(rtol=1e-4, atol=0)         # Adam's eps = 1e-8 against |g| ≥ 1e-3 here: ≤ 1e-5

  def first(method, **kw):
    tx = B.make_tx(method, lr, directions=d, **kw)
    return tx.update(grads, tx.init(params), params)[0]
  np.testing.assert_allclose(_flat(first("sgd")), -lr * g, rtol=1e-12)
  np.testing.assert_allclose(_flat(first("adam")), -lr * np.sign(g), **tol)
  np.testing.assert_allclose(_flat(first("pgd")), -lr * pg, rtol=1e-10)
  np.testing.assert_allclose(_flat(first("pgd_adam")), -lr * np.sign(pg), **tol)
  # pgd_m: P before SGD-momentum (0.9): −lr·P g, then −lr·(0.9 + 1)·P g on the same gradient
  tx = B.make_tx("pgd_m", lr, directions=d)
  u1, st = tx.update(grads, tx.init(params), params)
  u2, _ = tx.update(grads, st, params)
  np.testing.assert_allclose(_flat(u1), -lr * pg, rtol=1e-10)
  np.testing.assert_allclose(_flat(u2), -lr * 1.9 * pg, rtol=1e-10)
  # Muon's AdamW branch is Nesterov Adam (muon's nesterov=True, b1 = 0.9): its first step is
  # (b1 m̂₁ + (1 − b1) g/(1 − b1)) / √v̂₁ = (1 + b1/(1 + b1)) sign(g).
  nadam = 1 + 0.9 / 1.9
  for conv in ("matrix", "adam"):
    u = first("muon", muon_conv=conv)
    np.testing.assert_allclose(np.asarray(u["b"]), -lr * nadam * np.sign(np.asarray(grads["b"])),
                               **tol)
    # Newton–Schulz (5 quintic steps) maps singular values 4, 2, 1, ½ (ratio 8) into
    # roughly [0.7, 1.2]: the ratio falls below 2 (an Adam/SGD update would keep 8 or sign(g)).
    sv = np.linalg.svd(np.asarray(u["w"]), compute_uv=False)
    assert sv.max() / sv.min() < 2.0
    conv_is_adam = np.allclose(np.asarray(u["conv"]),
                               -lr * nadam * np.sign(np.asarray(grads["conv"])), **tol)
    assert conv_is_adam == (conv == "adam")


def test_registry_errors_name_the_argument():
  with pytest.raises(ValueError, match="directions"):
    B.make_tx("pgd", 0.1)
  with pytest.raises(ValueError, match="directions"):
    B.make_tx("pgd_adam", 0.1)
  with pytest.raises(ValueError, match="directions"):
    B.make_tx("pgd_m", 0.1)
  with pytest.raises(ValueError, match="method"):
    B.make_tx("lbfgs", 0.1)
  with pytest.raises(ValueError, match="muon_conv"):
    B.make_tx("muon", 0.1, muon_conv="svd")
  with pytest.raises(ValueError, match="pgd_step"):
    B.pgd_base_lr("newton", None, 8)
  with pytest.raises(ValueError, match="params"):      # the measured rule needs a point
    B.pgd_base_lr("measured", None, 8, arch="mlp")
  assert B.one_off_s("pgd", 3.0) == 3.0 and B.one_off_s("muon", 3.0) == 0.0


def test_stable_rule_is_the_critical_batch_step():
  # η*(b) = b / (β + (b − 1) λ_max / N): λ_max = 100 on N = 100 points, β = 2.
  d = optim.MSKDirections(jnp.zeros((1, 3)), jnp.array([100.0]), jnp.array([100.0]),
                          jnp.array(1.0), beta=jnp.array(2.0), n_points=100)
  assert B.pgd_base_lr("stable", d, 8) == pytest.approx(8 / (2 + 7 * 1.0))
  assert B.pgd_base_lr("absolute", d, 8) == 1.0


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  return x, y, B.init_params("mlp", x)


def test_train_run_records_accuracy_and_first_reach(tiny):
  x, y, v = tiny
  rec = B.train_run("mlp", v["params"], optax.adam(1e-2), x, y, x, y, batch_size=16, steps=40,
                    eval_every=10)
  assert rec["curve_step"] == [0, 10, 20, 30, 40] and not rec["diverged"]
  logits = B.model("mlp").apply(v, x)   # step-0 accuracy: an independent evaluation
  assert rec["curve_acc"][0] == pytest.approx(float(np.mean(np.argmax(logits, 1) == y)))
  assert rec["final_acc"] > 0.5          # 64 random labels are memorised by a 78k-param MLP
  st, t = B.first_reach(rec, rec["curve_acc"][2], offset_s=5.0)
  assert st <= 20 and t >= 5.0
  assert B.first_reach(rec, 1.01) == (None, None)


@pytest.mark.parametrize("loop", ["fit", "python"])
def test_train_run_is_one_fit_call(tiny, loop, monkeypatch):
  """train_run trains through the one loop (train.fit) in the mode the config names, and
  its record is fit's run: same parameters' accuracy, same curve steps."""
  x, y, v = tiny
  tx = optax.sgd(0.05, momentum=0.9)
  calls = []
  real_fit = T.fit
  monkeypatch.setattr(T, "fit", lambda *a, **k: calls.append(k) or real_fit(*a, **k))
  rec = B.train_run("mlp", v["params"], tx, x, y, x, y, batch_size=16, steps=10,
                    eval_every=5, seed=3, loop=loop)
  assert len(calls) == 1 and calls[0]["loop"] == B.FIT_LOOP[loop]
  ref = real_fit(B.loss_fn("mlp"), v["params"], tx, (x, y), steps=10, batch_size=16, seed=3)
  acc = float(B.eval_fn("mlp")(ref.state.params, x, y)["acc"])
  assert rec["loop"] == loop and rec["curve_step"] == [0, 5, 10]
  assert rec["final_acc"] == pytest.approx(acc, abs=1e-6)   # identical runs; float32 read-out
  with pytest.raises(ValueError, match="loop"):
    B.train_run("mlp", v["params"], tx, x, y, x, y, batch_size=16, steps=2, eval_every=1,
                loop="scan")


def test_train_run_takes_a_factory_with_traced_lr(tiny):
  """A tx factory + traced lr (one compilation for a whole grid) trains as the concrete tx."""
  x, y, v = tiny
  kw = dict(batch_size=16, steps=10, eval_every=5, seed=3)
  a = B.train_run("mlp", v["params"], optax.sgd(0.05, momentum=0.9), x, y, x, y, **kw)
  b = B.train_run("mlp", v["params"], lambda lr: optax.sgd(lr, momentum=0.9), x, y, x, y,
                  hparams=jnp.float32(0.05), **kw)
  # float32 throughout: the traced and the constant lr round alike up to a few ulps.
  assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-5)
  assert b["curve_test_loss"] == pytest.approx(a["curve_test_loss"], rel=1e-5)


def test_train_run_stops_a_diverging_run(tiny):
  x, y, v = tiny
  rec = B.train_run("mlp", v["params"], optax.sgd(1e4), x, y, x, y, batch_size=16, steps=40,
                    eval_every=5, seed=0, loop="python")
  assert rec["diverged"] and rec["steps_run"] < 40


def _rec(times, accs, one_off=0.0, step=10, final=None, diverged=False):
  return dict(curve_step=[step * i for i in range(len(accs))], curve_time=list(times),
              curve_acc=list(accs), final_acc=accs[-1] if final is None else final,
              train_s=times[-1], per_step_ms=1.0, one_off_s=one_off, diverged=diverged,
              lr=0.1, grid_value=0.1)


def test_summary_targets_equal_time_and_seed_statistics():
  runs = {  # two seeds each; times in seconds of training
      "sgd": [_rec([0, 1, 2], [0.1, 0.5, 0.6]), _rec([0, 1, 2], [0.1, 0.5, 0.8])],   # mean 0.7
      "adam": [_rec([0, 2, 4], [0.1, 0.3, 0.5]), _rec([0, 2, 4], [0.1, 0.4, 0.5])],
      "pgd": [_rec([0, 1, 2], [0.1, 0.75, 0.9], one_off=0.5),
              _rec([0, 1, 2], [0.1, 0.6, 0.7], one_off=0.5)]}
  rows, info = B.summarize(runs, ref=0.85)
  r = {row["method"]: row for row in rows}
  assert info["best_baseline"] == "sgd" and info["target_acc"] == pytest.approx(0.7)
  assert info["equal_time_s"] == pytest.approx(2.0)          # sgd's, the shortest baseline
  assert r["sgd"]["final_acc_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
  assert r["sgd"]["reached_target"] == "1/2" and r["sgd"]["wall_s_to_target"] == 2.0
  # pgd reaches 0.7 at t = 1 (+0.5 one-off) on seed 0 and t = 2 (+0.5) on seed 1
  assert r["pgd"]["reached_target"] == "2/2"
  assert r["pgd"]["wall_s_to_target"] == pytest.approx(2.0)
  assert r["pgd"]["steps_to_target"] == pytest.approx(15.0)
  assert r["pgd"]["reached_ref"] == "1/2" and r["pgd"]["wall_s_to_ref"] == pytest.approx(2.5)
  # at 2 s of wall time pgd has spent 0.5 s on its directions: the evaluation at t = 1
  assert r["pgd"]["acc_at_equal_time"] == pytest.approx((0.75 + 0.6) / 2)
  assert r["adam"]["acc_at_equal_time"] == pytest.approx(0.35)
  assert r["adam"]["reached_target"] == "0/2" and r["adam"]["wall_s_to_target"] is None
  assert r["pgd"]["total_s"] == pytest.approx(2.5)
  assert B.acc_at_time(runs["pgd"][0], 0.4, 0.5) is None


def test_quick_config_is_resolved_inside_and_small():
  s = load_config("configs/mnist1d.py:quick")
  assert all(steps <= 200 for _, _, steps, _ in s.settings)
  full = load_config("configs/mnist1d.py")
  # quick runs every default method; pgd_m is opt-in (its closed form is tested above)
  assert len(s.seeds) == 1 and set(s.methods) == set(full.methods)
  assert set(B.METHODS) == set(full.methods) | {"pgd_m"}
  for m in s.methods:
    assert len(B.grid(s, m)) == 1
  assert tuple(full.seeds) == (0, 1, 2)
  assert full.pgd_step == "measured" and full.directions_loss == "softmax_cross_entropy"
  assert B.grid(apply_overrides(full, ["pgd_step=stable"]), "pgd") == tuple(full.pgd_factors)
  assert B.grid(apply_overrides(full, ["pgd_step=absolute"]), "pgd") == tuple(full.pgd_lrs)


@pytest.mark.parametrize("override,match", [
    ("tune_seeds=(5,)", "tune_seeds"), ("pgd_step=newton", "pgd_step"),
    ("methods=('sgd','lbfgs')", "methods"), ("loop=scan", "loop"),
    ("methods=('sgd','sgd')", "methods")])
def test_bad_config_values_are_named(override, match):
  mod = load_config_module("configs/mnist1d.py")
  c = apply_overrides(load_config("configs/mnist1d.py"), [override])
  with pytest.raises(ConfigError, match=match):
    validate_config(c, mod)
