"""Reliability at the edges, by class of bad input (issue 20): every bad input of a public
function ends in a named error (the argument and the fix in the message), never a silent
wrong answer, a silent NaN or a crash inside JAX / neural-tangents / numpy.

Classes: modifiers g and ranks; kernel functions; eigensolvers at the edges; predictions;
CNN specs on the wrong inputs; the MNIST-1D cache and the runner. Hypothesis draws the bad
inputs per argument (few examples, no deadline: the suite stays fast).
"""
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mskjax
from mskjax import kernels, modifiers, nets
from mskjax import run as runner

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def rbf(a, b):
  return jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))


def rbf_get(a, b, get):
  return rbf(a, b)


X = jnp.linspace(-2.0, 2.0, 12)[:, None]
K = rbf(X, X)
Y = jnp.sin(2.0 * X[:, 0])


# ----------------------------------------------------------------- modifiers and ranks
BAD_VALUES = st.sampled_from([0.0, -1.0, -1e-300, np.nan, np.inf, -np.inf])


def _bad_modifier(bad, where):
  """g that returns valid values (flatten) except ``bad`` at position ``where % k``."""
  def g(evals, k):
    return jnp.full((k,), evals[k]).at[where % k].set(bad)
  return g


ENTRY_POINTS = {
    "msk_spectrum": lambda g: mskjax.msk_spectrum(K, g, 3),
    "msk_gram": lambda g: mskjax.msk_gram(K, g, 3),
    "preconditioner": lambda g: mskjax.preconditioner(K, g, 3),
    "msk_spectrum_from_eigenpairs":
        lambda g: mskjax.msk.msk_spectrum_from_eigenpairs(mskjax.eigh_desc(K), g, 3),
    "msk_kernel_fn": lambda g: mskjax.msk_kernel_fn(rbf, X, g, 3, get=None),
    "predict_gd_mse": lambda g: mskjax.predict_gd_mse(K, Y, g, 3, 10),
    "gradient_descent_mse": lambda g: mskjax.gradient_descent_mse(K, Y, g, 3),
    "max_learning_rate": lambda g: mskjax.steps.max_learning_rate(K, g, 3),
    "steps_to_tolerance": lambda g: mskjax.steps_to_tolerance(K, Y, g, 3),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@SETTINGS
@given(bad=BAD_VALUES, where=st.integers(0, 5))
def test_modifier_returning_zero_negative_or_nan_is_a_named_error(entry, bad, where):
  # Before: reached for some entries only; now every public function that takes g checks
  # its contract (k finite values > 0) and the message names g and says what to fix.
  with pytest.raises(ValueError, match=r"`g`") as e:
    ENTRY_POINTS[entry](_bad_modifier(bad, where))
  assert "finite" in str(e.value) or "> 0" in str(e.value)


@SETTINGS
@given(n=st.sampled_from([8, 16]), r=st.integers(2, 5), log_scale=st.integers(-100, 100),
       seed=st.integers(0, 2**16))
def test_k_at_the_rank_with_flatten_is_a_named_error_and_below_is_fine(n, r, log_scale, seed):
  # Rank-r K: with k = r, flatten's new values are λ_(r+1), round-off (~1e-16·λ₁): the
  # preconditioner S = I + V(g/λ − 1)Vᵀ has condition ~1e15 (before: accepted silently).
  # The threshold n·eps·λ₁ is scale-relative: the same at every log_scale.
  rng = np.random.default_rng(seed)
  Z = rng.standard_normal((n, r))
  Kr = jnp.asarray(10.0 ** log_scale * (Z @ Z.T))
  with pytest.raises(ValueError, match=r"`k`=%d reaches the numerical rank" % r) as e:
    mskjax.msk_spectrum(Kr, modifiers.flatten(), r)
  assert f"at most {r - 1}" in str(e.value) and "`g`" in str(e.value)
  with pytest.raises(ValueError, match="numerical rank"):
    mskjax.preconditioner(Kr, modifiers.flatten(), r)
  # One below the rank the anchor λ_r is a real eigenvalue: accepted, and S is well
  # conditioned relative to the spectrum it flattens (oracle: numpy eigvalsh).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")      # a random K may tie λ_k and λ_(k+1): not tested
    spec = mskjax.msk_spectrum(Kr, modifiers.flatten(), r - 1)
  lam = np.linalg.eigvalsh(np.asarray(Kr, np.float64))[::-1]
  np.testing.assert_allclose(np.asarray(spec.new_values), lam[r - 1], rtol=1e-8)


_NOT_A_NUMBER = st.one_of(st.none(), st.text(max_size=3), st.booleans(),
                         st.sampled_from([np.nan, np.inf, -np.inf]))
_NOT_POSITIVE = st.one_of(_NOT_A_NUMBER, st.floats(max_value=0.0, allow_nan=False))
FACTORY_ARGS = {
    "power p": (lambda a: modifiers.power(a), "p", _NOT_A_NUMBER),
    "power scale": (lambda a: modifiers.power(1.0, a), "scale", _NOT_POSITIVE),
    "exponential rate": (lambda a: modifiers.exponential(a), "rate", _NOT_A_NUMBER),
    "scale c": (lambda a: modifiers.scale(a), "c", _NOT_POSITIVE),
    "values v": (lambda a: modifiers.values(a), "v", st.one_of(
        st.none(), st.text(max_size=3), st.just([]), st.just([[1.0, 2.0]]),
        st.lists(st.floats(max_value=0.0), min_size=1, max_size=3),
        st.lists(st.sampled_from([1.0, np.nan, np.inf]), min_size=2, max_size=3).filter(
            lambda v: not all(np.isfinite(v))))),
    "reverse blocks": (lambda a: modifiers.reverse(a), "blocks",
                       st.one_of(st.none(), st.text(max_size=3), st.integers())),
    "reverse rtol": (lambda a: modifiers.reverse(True, a), "rtol",
                     st.one_of(_NOT_A_NUMBER, st.floats(max_value=-1e-300, allow_nan=False))),
    "reverse_blocks block_starts": (lambda a: modifiers.reverse_blocks(a), "block_starts",
                                    st.one_of(st.none(), st.text(min_size=1, max_size=3),
                                              st.just([]),
                                              st.lists(st.integers(1, 9), min_size=1),
                                              st.lists(st.floats(0.1, 0.9), min_size=1))),
}


@pytest.mark.parametrize("factory", sorted(FACTORY_ARGS))
@SETTINGS
@given(data=st.data())
def test_modifier_factory_arguments_are_named(factory, data):
  # Before: values([]) and reverse(1) were accepted, reverse_blocks([0.5]) became [0],
  # values(None)/reverse_blocks(None) ended in numpy errors.
  make, name, bad = FACTORY_ARGS[factory]
  arg = data.draw(bad)
  with pytest.raises((TypeError, ValueError), match=f"`{name}"):
    make(arg)


@pytest.mark.parametrize("out", [None, "ab", object()])
def test_g_returning_a_non_array_is_named(out):
  with pytest.raises(TypeError, match=r"modifier `g` .* returned"):
    mskjax.msk_spectrum(K, lambda evals, k: out, 2)


def test_g_that_returns_round_off_values_is_named():
  tiny = lambda evals, k: jnp.full((k,), 1e-17 * evals[0])
  with pytest.raises(ValueError, match=r"modifier `g` .* round-off size"):
    mskjax.msk_spectrum(K, tiny, 2)


# ----------------------------------------------------------------------------- kernels
def _wrong_shape(a, b):
  return jnp.ones((a.shape[0], 1))


def _wrong_rank(a, b):
  return rbf(a, b)[..., None]


def _asymmetric(a, b):
  return jnp.exp(-((a[:, None] - 0.5 * b[None]) ** 2).sum(-1))


def _nan_kernel(a, b):
  return rbf(a, b) * jnp.nan


def _nan_far(a, b):        # finite on the first points, NaN where |x| > 1.5
  return jnp.where((jnp.abs(a) > 1.5) | (jnp.abs(b.T) > 1.5), jnp.nan, rbf(a, b))


BAD_KERNELS = {"wrong shape": (_wrong_shape, "shape"), "output axis": (_wrong_rank, "shape"),
               "asymmetric": (_asymmetric, "not symmetric"), "NaN": (_nan_kernel, "NaN"),
               "NaN away from the first block": (_nan_far, "NaN")}

def _nt_style(kf):
  """kernel_fn(x1, x2, get) with x2=None meaning x1 (neural-tangents' convention)."""
  return lambda a, b, get: kf(a, a if b is None else b)


KERNEL_ENTRIES = {
    "gram": lambda kf, x: kernels.gram(_nt_style(kf), x, block_size=4),
    "gram unblocked": lambda kf, x: kernels.gram(_nt_style(kf), x),
    "operator cached": lambda kf, x: kernels.kernel_operator(kf, x, get=None, cache=True,
                                                             block_size=4) @ jnp.ones(len(x)),
    "operator uncached": lambda kf, x: kernels.kernel_operator(kf, x, get=None, cache=False,
                                                               block_size=4) @ jnp.ones(len(x)),
    "kernel_matvec": lambda kf, x: kernels.kernel_matvec(kf, x, jnp.ones(len(x)), get=None,
                                                         block_size=4),
    "msk_kernel_fn": lambda kf, x: mskjax.msk_kernel_fn(kf, x, modifiers.flatten(), 2,
                                                        get=None, block_size=4),
}


@pytest.mark.parametrize("entry", sorted(KERNEL_ENTRIES))
@pytest.mark.parametrize("defect", sorted(BAD_KERNELS))
def test_bad_kernel_fn_is_a_named_error(entry, defect):
  # Before: a wrong shape was broadcast into K, an asymmetric kernel was mirrored (cached
  # and uncached products then differ), a NaN kernel gave NaN products with cache=False.
  kf, what = BAD_KERNELS[defect]
  with pytest.raises(ValueError, match="kernel_fn") as e:
    KERNEL_ENTRIES[entry](kf, X)
  assert what in str(e.value)


def test_symmetric_kernel_cached_and_uncached_products_agree():
  # The checks must not reject a good kernel; the oracle is the dense numpy product.
  v = np.random.default_rng(0).standard_normal((12, 3))
  ref = np.asarray(K) @ v
  for cache in (True, False):
    op = kernels.kernel_operator(rbf, X, get=None, cache=cache, block_size=4)
    np.testing.assert_allclose(np.asarray(op @ jnp.asarray(v)), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 1), (0, 4, 1)])
def test_empty_points_are_a_named_error(shape):
  with pytest.raises(ValueError, match="`x` holds no points"):
    kernels.kernel_operator(rbf, jnp.zeros(shape), get=None)
  with pytest.raises(ValueError, match="x_train"):
    mskjax.msk_kernel_fn(rbf, jnp.zeros(shape), modifiers.flatten(), 1, get=None)


# ------------------------------------------------------------------ eigensolvers
@SETTINGS
@given(log_scale=st.integers(-250, 250))
@example(log_scale=175)       # the issue's case: entries >~ 1e170
@example(log_scale=250)
@example(log_scale=-200)      # underflow side
def test_krylov_is_scale_invariant(log_scale):
  # Before: entries >~ 1e170 gave all-zero eigenpairs with converged=True (the basis Gram
  # matrices overflowed). Oracle: numpy eigvalsh of the unscaled K.
  s = 10.0 ** log_scale
  top, info = mskjax.eigh_top(kernels.matrix_operator(s * K), 3, method="krylov",
                              return_info=True)
  lam = np.linalg.eigvalsh(np.asarray(K))[::-1][:3]
  assert info.converged
  np.testing.assert_allclose(np.asarray(top.values) / s, lam, rtol=1e-9)
  assert float(np.max(np.asarray(info.residuals))) / s <= 1e-6 * lam[0]


@pytest.mark.parametrize("method", ["nystrom", "krylov"])
def test_negative_definite_kernel_is_named(method):
  # Before (Nyström): W negative definite was clamped to zero eigenpairs silently.
  op = kernels.kernel_operator(lambda a, b: -rbf(a, b), X, get=None, cache=False,
                               block_size=4)
  with pytest.raises(ValueError, match=r"`K.*is not positive semi-definite"):
    mskjax.eigh_top(op, 2, method=method, n_landmarks=8)


@pytest.mark.parametrize("dn", [-5, 5])
def test_hand_built_operator_with_wrong_n_is_named(dn):
  op = kernels.matrix_operator(K)
  bad = kernels.KernelOperator(12 + dn, K.dtype, op.matmul)
  with pytest.raises(ValueError, match=r"`K.n`"):
    mskjax.eigh_top(bad, 2, method="krylov")
  raw = kernels.KernelOperator(12 + dn, K.dtype, lambda v: K @ v)   # fails in dot_general
  with pytest.raises(ValueError, match=r"`K.n`"):
    mskjax.msk_spectrum(raw, modifiers.flatten(), 2, method="krylov")
  with pytest.raises(ValueError, match=r"`K.matrix`"):
    mskjax.eigh_top(op._replace(n=12 + dn), 2, method="dense")


# ------------------------------------------------------------------------- predictions
@SETTINGS
@given(seed=st.integers(0, 2**16), g=st.sampled_from([None, "flatten"]))
def test_eigenpairs_of_another_kernel_are_named(seed, g):
  # Same n, different K: before, used unchecked (65 % error in the predictions).
  rng = np.random.default_rng(seed)
  X2 = jnp.asarray(rng.uniform(-3, 3, (12, 1)))
  other = mskjax.eigh_desc(rbf(X2, X2))
  mod = None if g is None else modifiers.from_name(g)
  k = None if g is None else 2
  with pytest.raises(ValueError, match="`eigenpairs` are not eigenpairs"):
    mskjax.predict_gd_mse(K, Y, mod, k, 10, eigenpairs=other)
  with pytest.raises(ValueError, match="`eigenpairs`"):
    mskjax.steps_to_tolerance(K, Y, mod, k, eigenpairs=other)
  with pytest.raises(ValueError, match="`eigenpairs`"):
    mskjax.steps.max_learning_rate(K, mod, k, eigenpairs=other)


def test_eigenpairs_of_the_same_kernel_in_float32_are_accepted():
  # No false alarm: float32 eigenpairs of this K are its eigenpairs to float32 round-off.
  own = mskjax.eigh_desc(K.astype(jnp.float32))
  p = mskjax.predict_gd_mse(K, Y, None, None, 10, eigenpairs=own)
  ref = mskjax.predict_gd_mse(K, Y, None, None, 10)
  np.testing.assert_allclose(np.asarray(p.train), np.asarray(ref.train), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fn", ["predict_gd_mse", "gradient_descent_mse"])
@pytest.mark.parametrize("g", [None, "flatten"])
@pytest.mark.parametrize("kw", ["tie_rtl", "learnig_rate", "K_test", "flw"])
def test_misspelt_keywords_are_rejected(fn, g, kw):
  # Before: with g=None every extra keyword was silently ignored.
  mod = None if g is None else modifiers.from_name(g)
  k = None if g is None else 2
  args = (K, Y, mod, k) + ((10,) if fn == "predict_gd_mse" else ())
  with pytest.raises(TypeError, match=rf"{fn} got unexpected keyword .*{kw}"):
    getattr(mskjax, fn)(*args, **{kw: 1.0})


@SETTINGS
@given(t=st.one_of(st.text(max_size=4), st.none(), st.booleans(), st.just([[1, 2], [3]]),
                   st.just(object())))
def test_t_of_the_wrong_type_is_named(t):
  with pytest.raises(TypeError, match="`t`"):
    mskjax.predict_gd_mse(K, Y, modifiers.flatten(), 2, t)


def test_empty_test_kernel_is_named():
  with pytest.raises(ValueError, match="`K_test_train` has no rows"):
    mskjax.predict_gd_mse(K, Y, None, None, 10, K_test_train=jnp.zeros((0, 12)))


# ------------------------------------------------------------------------- CNN specs
CNN_SPECS = st.builds(
    lambda ks, pad, pool, sd: nets.CNNSpec(channels=(2,), kernel_sizes=ks, padding=pad,
                                           pool=pool, spatial_dims=sd),
    ks=st.integers(1, 7), pad=st.sampled_from(["SAME", "VALID"]),
    pool=st.sampled_from([None, 2, 4, 8]), sd=st.sampled_from([1, 2]))


def _fits(spec, spatial):
  try:
    spec.output_spatial_shape(spatial)
    return True
  except ValueError:
    return False


@settings(max_examples=10, deadline=None, derandomize=True)
@given(spec=CNN_SPECS, length=st.integers(2, 8), drop_channel=st.booleans())
def test_cnn_inputs_that_do_not_fit_are_named(spec, length, drop_channel):
  # Before: a VALID kernel or a pool larger than its input ended in ZeroDivisionError inside
  # neural-tangents; a missing channel axis or a 2-D spec on 1-D data failed inside JAX.
  # Either the input fits the spec (then the kernel traces to an (n, n) matrix: eval_shape,
  # no evaluation) or a ValueError names x1 and the fix.
  _, _, kernel_fn = nets.stax_cnn(spec)
  x = jnp.ones((2, length, 1))                    # 1-D data with a channel axis
  if drop_channel:
    x = x[..., 0]
  ok = not drop_channel and spec.spatial_dims == 1 and _fits(spec, x.shape[1:-1])
  if ok:
    assert jax.eval_shape(lambda a: kernel_fn(a, None, "ntk"), x).shape == (2, 2)
    return
  with pytest.raises(ValueError, match=r"stax_cnn kernel_fn: x1") as e:
    kernel_fn(x, None, "ntk")
  assert any(w in str(e.value) for w in ("x[..., None]", "spatial_dims", "VALID", "pool"))


@pytest.mark.parametrize("spec_kw, shape, match", [
    (dict(kernel_sizes=5, padding="VALID"), (2, 3, 1), "VALID"),     # kernel > input
    (dict(kernel_sizes=3, pool=8), (2, 4, 1), "pool window"),         # pool > input
    (dict(kernel_sizes=3), (2, 8), r"x\[\.\.\., None\]"),           # no channel axis
    (dict(kernel_sizes=3, spatial_dims=2), (2, 8, 1), "spatial_dims=1"),  # 2-D spec, 1-D data
])
def test_cnn_issue_examples_are_named(spec_kw, shape, match):
  _, apply_fn, kernel_fn = nets.stax_cnn(nets.CNNSpec(channels=(2,), **spec_kw))
  with pytest.raises(ValueError, match=match):
    kernel_fn(jnp.ones(shape), None, "ntk")
  with pytest.raises(ValueError, match="inputs"):
    apply_fn({}, jnp.ones(shape))
  with pytest.raises(ValueError, match="x1"):
    nets.make_network(nets.CNNSpec(channels=(2,), **spec_kw)).kernel_fn(jnp.ones(shape))
  with pytest.raises(ValueError, match="x1"):
    kernels.gram(kernel_fn, jnp.ones(shape))


def test_cnn_checks_keep_the_kernel_usable_by_the_operators():
  # The checked kernel_fn keeps neural-tangents' signature (get as third argument), so the
  # operator and gram take it; values agree with the unchecked stax kernel (oracle).
  spec = nets.CNNSpec(channels=(2,), kernel_sizes=3)
  kfn = nets.stax_cnn(spec)[2]
  raw = kfn.__wrapped__
  x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 6, 1)))
  np.testing.assert_array_equal(np.asarray(kernels.gram(kfn, x, block_size=3)),
                                np.asarray(kernels.gram(raw, x, block_size=3)))


# ------------------------------------------------------------------- data and runner
def _corrupt_truncated(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _corrupt_missing_key(path):
  with np.load(path) as f:
    arrays = {k: f[k] for k in ("x", "y", "x_test")}
  np.savez(path, **arrays)


def _corrupt_wrong_shape(path):
  with np.load(path) as f:
    arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
  arrays["y"] = arrays["y"][:3]
  np.savez(path, **arrays)


def _corrupt_garbage(path):
  path.write_bytes(b"not a zip file at all")


@pytest.fixture(scope="module")
def mnist1d_small(tmp_path_factory):
  d = tmp_path_factory.mktemp("mnist1d")
  ds = mskjax.data.load_mnist1d(num_samples=20, cache_dir=d)
  return d, ds


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_missing_key,
                                     _corrupt_wrong_shape, _corrupt_garbage])
def test_corrupt_mnist1d_cache_is_regenerated_with_a_warning(mnist1d_small, tmp_path, corrupt):
  # Before: BadZipFile / KeyError tracebacks (or a silently short y).
  src, ref = mnist1d_small
  path = tmp_path / "mnist1d_n20_seed42.npz"
  path.write_bytes((src / path.name).read_bytes())
  corrupt(path)
  with pytest.warns(UserWarning, match="cache file .* regenerating"):
    ds = mskjax.data.load_mnist1d(num_samples=20, cache_dir=tmp_path)
  for a, b in zip(ds, ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with warnings.catch_warnings():
    warnings.simplefilter("error")          # rewritten: read back without a warning
    mskjax.data.load_mnist1d(num_samples=20, cache_dir=tmp_path)


TOY_CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.program = "toyedge.toy"
      c.units = 2
      return c
    ''')

TOY_PROGRAM = textwrap.dedent('''
    def run(config, ctx):
      rows = [ctx.cached(f"u{i}", lambda: dict(i=i)) for i in range(config.units)]
      ctx.write_table(rows)
    ''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(tmp_path))
  (tmp_path / "toyedge").mkdir()
  (tmp_path / "toyedge" / "__init__.py").write_text("")
  (tmp_path / "toyedge" / "toy.py").write_text(TOY_PROGRAM)
  path = tmp_path / "toy.py"
  path.write_text(TOY_CONFIG)
  return path


@pytest.mark.parametrize("damage", ['{"program": "toyedge.to', "", "[1, 2]", "\xff\xfe"])
def test_torn_config_json_on_resume_is_named(toy, tmp_path, capsys, damage):
  runs = tmp_path / "runs"
  assert runner.main([str(toy), "--tag", "t", "--runs-dir", str(runs), "--no-progress"]) == 0
  cfg = runs / "toy" / "t" / "config.json"
  cfg.write_bytes(damage.encode("latin-1"))
  capsys.readouterr()
  assert runner.main([str(toy), "--tag", "t", "--runs-dir", str(runs), "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert "config.json is damaged" in err and "delete it" in err


@pytest.mark.parametrize("name", ["toy.json", "toy.txt", "toy"])
def test_config_path_that_is_not_python_is_named(toy, tmp_path, capsys, name):
  other = tmp_path / name
  other.write_text(TOY_CONFIG)
  assert runner.main([str(other), "--runs-dir", str(tmp_path / "runs")]) == 2
  assert "is not a Python file" in capsys.readouterr().err
  with pytest.raises(runner.ConfigError, match="configs/NAME.py"):
    runner.load_config(other)


@pytest.mark.parametrize("tag", ["ABSOLUTE", "../x", "a/../../x", ".", "..", "~/x", ""])
def test_tag_outside_runs_dir_is_refused(toy, tmp_path, capsys, tag):
  runs = tmp_path / "sub" / "runs"
  absolute = tmp_path / "abs-tag"          # an absolute path outside --runs-dir
  tag = str(absolute) if tag == "ABSOLUTE" else tag
  before = set(tmp_path.rglob("*"))
  assert runner.main([str(toy), "--tag", tag, "--runs-dir", str(runs)]) == 2
  assert "--tag" in capsys.readouterr().err
  assert set(tmp_path.rglob("*")) == before                 # nothing written anywhere
  assert not absolute.exists()


@pytest.mark.parametrize("tag", ["demo", "sweep/a", "2026-01-01"])
def test_plain_tags_are_accepted(tag):
  assert runner.check_tag(tag) == tag


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_lock_of_an_unreaped_zombie_is_taken_over(tmp_path):
  # A killed owner whose parent has not reaped it is a zombie: kill(pid, 0) succeeds, but
  # it is dead (State: Z). Before, the resume was refused as "in use".
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  try:
    for _ in range(200):                          # wait until it has exited (not reaped)
      with open(f"/proc/{child.pid}/status") as f:
        if any(line.split()[1:2] == ["Z"] for line in f if line.startswith("State:")):
          break
      import time
      time.sleep(0.01)
    else:
      pytest.fail("the child never became a zombie")
    import socket
    (tmp_path / ".lock").write_text(f"{child.pid} {socket.gethostname()}\n")
    lock = runner.RunLock(tmp_path).acquire()
    assert lock.held and lock.took_over == child.pid
    lock.release()
  finally:
    child.wait()
  # a live process still holds its lock
  (tmp_path / ".lock").write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")
  with pytest.raises(runner.RunLockedError, match="in use"):
    runner.RunLock(tmp_path).acquire()
