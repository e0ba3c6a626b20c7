"""The held-out sweep's classes of bad input (issue 30), one property per class: hypothesis
draws new cases of each kind (which argument, which hostile value, where the NaN sits), so
a fix must hold for the class, not for the listed cases.

1. a subsample too small for k: a named warning, and the values stay those of the s-point
   kernel (numpy oracle);
2. arguments that must be refused: anything but one PRNG key as ``key``; options documented
   as ints given None/float/bool/str, whichever method runs;
3. non-finite inputs outside ``jit``: a ``ValueError`` naming the argument (params leaf,
   ``init_vectors``, or ``apply_fn`` for a Jacobian with NaN rows); inside ``jit`` NaN
   propagates to NaN (the documented policy), never to a finite number;
4. errors that happen must name the argument (learning rates, updates, optimizer states,
   directions, scalars given as arrays, block-size costs, kernel functions, losses, data,
   thresholds, paths).

Small shapes, few derandomized examples, no deadline: the file runs in about a minute.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import mskjax
from mskjax import data, kernels, modifiers, optim, steps, tangents, train
from mskjax.nets import MLPSpec, make_network

# no shrinking: a failure reports its first example (shrinking a failing eigen-solve case
# took minutes)
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _raises_naming(fn, name, exc=(TypeError, ValueError)):
  """fn() must raise one of ``exc`` whose message names ``name`` in backticks."""
  with pytest.raises(exc) as info:
    fn()
  assert f"`{name}" in str(info.value), str(info.value)


# ------------------------------------------------------------------ shared small problem
N, D = 12, 3
X = np.random.default_rng(0).standard_normal((N, D))
NET = make_network(MLPSpec(depth=1, width=8, out_dim=1))
VARS = NET.model.init(jax.random.PRNGKey(0), jnp.asarray(X))
LINEAR = lambda w, xx: xx @ w          # J = X (⊗ I_c): the kernel X Xᵀ ⊗ I_c in closed form


@functools.lru_cache(maxsize=None)
def _d():
  """Directions of NET at VARS (k = 2), built once."""
  return mskjax.msk_directions(NET.model.apply, VARS, jnp.asarray(X), modifiers.flatten(), 2)


# ------------------------------------------------------------------ 1. subsample vs k
@SETTINGS
@given(k=st.integers(1, 6), extra=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_a_subsample_too_small_for_k_warns_by_name_and_values_are_the_s_point_kernel(
    k, extra, seed):
  n = 120
  x = np.random.default_rng(seed).standard_normal((n, 12))
  s = min(k + extra, n - 1)
  w = np.zeros((12, 1))
  with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    d = mskjax.msk_directions(LINEAR, w, x, modifiers.flatten(), k, subsample=s,
                              key=jax.random.PRNGKey(seed), compute_beta=False)
  named = [r for r in rec if "`subsample`" in str(r.message)]
  assert bool(named) == (s < 10 * (k + 1)), [str(r.message) for r in rec]
  # the contract that holds at any s: eigenvalues of the kernel on the s chosen points
  # (oracle: numpy's eigvalsh of X_s X_sᵀ); 1e-2 = the solver's default tol
  xs = x[np.asarray(d.indices)]
  lam = np.linalg.eigvalsh(xs @ xs.T)[::-1][:k + 1]
  got = np.append(np.asarray(d.values), float(d.next_value))
  np.testing.assert_allclose(got, lam, rtol=1e-2)


# ------------------------------------------------------------------ 2. refused arguments
BAD_KEYS = st.one_of(
    st.integers(-5, 2**40), st.floats(allow_nan=False, width=32), st.text(max_size=3),
    st.booleans(),
    st.lists(st.integers(0, 5), min_size=1, max_size=4).filter(lambda l: len(l) != 2).map(
        lambda l: np.asarray(l, np.uint32)),                                 # wrong length
    st.just(np.zeros(2, np.int32)), st.just(np.zeros(2, np.float32)),      # wrong dtype
    st.just(np.zeros((2, 2), np.uint32)),                                  # a batch
    st.just("typed-batch"))


def _key_value(bad):
  return jax.random.split(jax.random.key(0), 2) if isinstance(bad, str) and \
      bad == "typed-batch" else bad


KEY_ENTRIES = {
    "msk_directions": lambda key: mskjax.msk_directions(
        LINEAR, np.zeros((D, 1)), X, modifiers.flatten(), 2, subsample=N - 1, key=key),
    "eigh_top": lambda key: mskjax.eigh_top(np.diag(np.arange(1.0, 7.0)), 2, key=key),
    "msk_spectrum": lambda key: mskjax.msk_spectrum(np.diag(np.arange(1.0, 7.0)),
                                                    modifiers.flatten(), 2, key=key),
    "circle": lambda key: data.circle(5, equispaced=False, key=key),
    "sphere": lambda key: data.sphere(5, 3, key),
    "whitened_linear_teacher": lambda key: data.whitened_linear_teacher(8, 4, key=key),
    "power_law_gaussian": lambda key: data.power_law_gaussian(8, 4, 1.0, key=key),
    "init_zero_output": lambda key: mskjax.init_zero_output(
        make_network(MLPSpec(depth=1, width=4), antisymmetric=True).model, key, X),
}


@pytest.mark.parametrize("entry", sorted(KEY_ENTRIES))
@SETTINGS
@given(bad=BAD_KEYS)
def test_anything_but_one_prng_key_is_refused_by_name(entry, bad):
  _raises_naming(lambda: KEY_ENTRIES[entry](_key_value(bad)), "key")


@pytest.mark.parametrize("entry", sorted(KEY_ENTRIES))
def test_both_key_spellings_are_accepted(entry):
  with warnings.catch_warnings():   # msk_directions' 11 of 12 points are too few for k = 2
    warnings.filterwarnings("ignore", message=".*`subsample`", category=UserWarning)
    for key in (jax.random.PRNGKey(1), jax.random.key(1)):
      KEY_ENTRIES[entry](key)


BAD_INTS = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=2),
                     st.integers(-3, 0), st.just(np.array([3, 4])))


@pytest.mark.parametrize("option", ["oversample", "n_iter", "depth", "max_cycles"])
@pytest.mark.parametrize("method", ["dense", "randomized", "krylov"])
@SETTINGS
@given(bad=BAD_INTS)
def test_eigensolver_int_options_are_checked_whichever_method_runs(option, method, bad):
  lo = 0 if option in ("oversample", "depth") else 1
  if isinstance(bad, int) and not isinstance(bad, bool) and bad >= lo:
    return                                    # a legal value: nothing to refuse
  _raises_naming(lambda: mskjax.eigh_top(np.diag(np.arange(1.0, 9.0)), 2, method=method,
                                         **{option: bad}), option)


# ------------------------------------------------------------------ 3. non-finite inputs
NONFINITE = st.sampled_from([np.nan, np.inf, -np.inf])


def _poisoned(tree, leaf_pick, flat_pick, value):
  leaves, tdef = jax.tree.flatten(tree)
  i = leaf_pick % len(leaves)
  a = np.array(leaves[i])
  a.reshape(-1)[flat_pick % a.size] = value
  leaves[i] = jnp.asarray(a)
  return jax.tree.unflatten(tdef, leaves), i


PARAM_ENTRIES = {
    "empirical_ntk": lambda p: mskjax.empirical_ntk(NET.model.apply, p, jnp.asarray(X)),
    "msk_directions": lambda p: mskjax.msk_directions(NET.model.apply, p, jnp.asarray(X),
                                                      modifiers.flatten(), 2),
    "jacobian_operator": lambda p: tangents.jacobian_operator(
        NET.model.apply, p, jnp.asarray(X)).jvp(
            jax.tree.map(lambda a: jnp.ones((1,) + a.shape), p["params"])),
    "jacobian_matrix": lambda p: tangents.jacobian_matrix(NET.model.apply, p, jnp.asarray(X)),
}


@pytest.mark.parametrize("entry", sorted(PARAM_ENTRIES))
@SETTINGS
@given(leaf=st.integers(0, 10), where=st.integers(0, 10**6), value=NONFINITE)
def test_non_finite_params_are_named_outside_jit(entry, leaf, where, value):
  bad, i = _poisoned(VARS, leaf, where, value)
  with pytest.raises(ValueError) as info:
    PARAM_ENTRIES[entry](bad)
  leaf_path = jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(VARS)[i][0][-2:])
  msg = str(info.value)
  assert "`params" in msg and leaf_path in msg and "NaN or inf" in msg, (leaf_path, msg)


@SETTINGS
@given(leaf=st.integers(0, 10), where=st.integers(0, 10**6), value=NONFINITE)
def test_inside_jit_non_finite_params_give_non_finite_kernels(leaf, where, value):
  # the documented policy in jit: no value checks, NaN in -> NaN out (never a finite number)
  bad, _ = _poisoned(VARS, leaf, where, value)
  K = jax.jit(lambda p: mskjax.empirical_ntk(NET.model.apply, p, jnp.asarray(X)))(bad)
  assert not np.all(np.isfinite(np.asarray(K)))


@SETTINGS
@given(rows=st.lists(st.integers(0, N - 1), min_size=1, max_size=4, unique=True),
       value=NONFINITE, poison=st.sampled_from(["outputs", "derivative"]),
       entry=st.sampled_from(["empirical_ntk", "msk_directions", "jacobian_matrix"]),
       # the three solver paths in msk_directions' vocabulary: explicit Jacobian + dense eigh,
       # matrix-free randomized, Krylov
       method=st.sampled_from([dict(method="dense", jacobian="explicit"),
                               dict(method="randomized", jacobian="matrix_free"),
                               dict(method="krylov")]))
def test_a_jacobian_with_non_finite_rows_names_apply_fn(rows, value, poison, entry, method):
  # The chosen points are recognised by their first coordinate (so any block of points
  # works). "outputs": f and its Jacobian are non-finite on them; "derivative": f is finite
  # everywhere, but √|x·(w − w₀)| at w = w₀ has an infinite/NaN derivative on them.
  marks = jnp.asarray(X[rows, 0])
  w0 = jnp.asarray(np.random.default_rng(1).standard_normal((D, 1)))

  def fn(w, xx):
    hit = jnp.isin(xx[:, 0], marks)[:, None]
    if poison == "outputs":
      return (xx @ w) * jnp.where(hit, value, 1.0)
    return xx @ w + jnp.where(hit, jnp.sqrt(jnp.abs(xx @ (w - w0))), 0.0)

  call = {"empirical_ntk": lambda: mskjax.empirical_ntk(fn, w0, jnp.asarray(X)),
          "msk_directions": lambda: mskjax.msk_directions(fn, w0, X, modifiers.flatten(), 2,
                                                          **method),
          "jacobian_matrix": lambda: tangents.jacobian_matrix(fn, w0, jnp.asarray(X))}[entry]
  _raises_naming(call, "apply_fn", ValueError)


@SETTINGS
@given(shape=st.sampled_from([(N, 3), (N, 1)]), value=NONFINITE, where=st.integers(0, 100))
def test_non_finite_init_vectors_are_named(shape, value, where):
  v = np.random.default_rng(0).standard_normal(shape)
  v.reshape(-1)[where % v.size] = value
  _raises_naming(lambda: mskjax.msk_directions(NET.model.apply, VARS, X, modifiers.flatten(),
                                               2, init_vectors=v), "init_vectors", ValueError)


# ------------------------------------------------------------------ 4. errors name the argument
BAD_SCALARS = st.one_of(st.text(min_size=1, max_size=4), st.none(),
                        st.lists(st.floats(0.1, 2), min_size=2, max_size=3).map(np.asarray),
                        st.just(1j), st.just(np.array(["0.1"])))


@SETTINGS
@given(bad=BAD_SCALARS)
def test_a_learning_rate_that_is_not_a_number_is_named(bad):
  _raises_naming(lambda: optim.msk_sgd(bad, _d()), "learning_rate")


@SETTINGS
@given(dtype=st.sampled_from([np.int32, np.int64, np.bool_, np.uint8]))
def test_integer_or_bool_updates_are_named(dtype):
  tx = optim.scale_by_msk(_d())
  ups = jax.tree.map(lambda a: jnp.ones(a.shape[1:], dtype), _d().directions)
  _raises_naming(lambda: tx.update(ups, tx.init(None)), "updates", TypeError)


PARAM_VARIANTS = st.sampled_from(["extra-axis", "other-tree", "dropped-leaf"])


def _other_params(kind):
  p = VARS["params"]
  if kind == "extra-axis":
    return jax.tree.map(lambda a: jnp.zeros(a.shape + (1,)), p)
  if kind == "other-tree":
    return {"w": jnp.zeros(3)}
  leaves = jax.tree_util.tree_leaves_with_path(p)
  return {"only": leaves[0][1]}


@SETTINGS
@given(kind=PARAM_VARIANTS, momentum=st.sampled_from([0.5, 0.9]))
def test_a_momentum_state_of_other_parameters_is_named(kind, momentum):
  tx = optim.msk_sgd(0.1, _d(), momentum=momentum)
  grads = jax.tree.map(jnp.ones_like, VARS["params"])
  _raises_naming(lambda: tx.update(grads, (tx.init(VARS["params"])[0],
                                           tx.init(_other_params(kind))[1])), "state")


def _orthonormal_like(tree, k, seed=0):
  leaves, tdef = jax.tree.flatten(tree)
  sizes = [int(np.prod(np.shape(l))) for l in leaves]
  Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((sum(sizes), k)))[0].T
  out, o = [], 0
  for l, sz in zip(leaves, sizes):
    out.append(jnp.asarray(Q[:, o:o + sz].reshape((k,) + np.shape(l))))
    o += sz
  return jax.tree.unflatten(tdef, out)


@SETTINGS
@given(kind=PARAM_VARIANTS, seed=st.integers(0, 100))
def test_replace_directions_of_other_parameters_is_named(kind, seed):
  state = optim.msk_sgd(0.1, _d()).init(VARS["params"])
  new = _d()._replace(directions=_orthonormal_like(_other_params(kind), 2, seed))
  _raises_naming(lambda: optim.replace_directions(state, new), "directions.directions",
                 ValueError)


@pytest.mark.parametrize("name", ["lambda_max", "beta", "n_points"])
@SETTINGS
@given(bad=BAD_SCALARS.filter(lambda b: b is not None))
def test_step_rule_numbers_that_are_not_one_number_are_named(name, bad):
  args = dict(lambda_max=100.0, beta=2.0, n_points=100)
  args[name] = bad
  _raises_naming(lambda: steps.stable_learning_rate(batch_size=4, **args), name)


@pytest.mark.parametrize("name", ["itemsize", "temporaries"])
@SETTINGS
@given(bad=st.one_of(st.integers(-4, 0), st.floats(0.5, 8.0), st.text(max_size=2),
                     st.booleans()))
def test_block_costs_that_are_not_positive_ints_are_named(name, bad):
  kw = {"itemsize": 8, "temporaries": 4, name: bad}
  _raises_naming(lambda: kernels.block_size_for_budget(1 << 20, **kw), name)


BAD_KERNEL_FNS = st.sampled_from([None, 3, "ntk", lambda a, b: a @ b.T, lambda a: a,
                                  lambda a, b, c, d: a])


@SETTINGS
@given(kernel_fn=BAD_KERNEL_FNS, get=st.sampled_from(["ntk", "nngp"]))
def test_gram_names_a_kernel_fn_it_cannot_call(kernel_fn, get):
  _raises_naming(lambda: mskjax.gram(kernel_fn, X, get=get), "kernel_fn", TypeError)


def _loss(p, batch, idx):
  return jnp.mean((NET.model.apply(p, batch[0])[:, 0] - batch[1]) ** 2)


@SETTINGS
@given(out=st.sampled_from(["scalar", "vector", "triple"]))
def test_fit_names_has_aux_when_the_loss_does_not_return_a_pair(out):
  f = {"scalar": _loss, "vector": lambda p, b, i: jnp.stack([_loss(p, b, i)] * 2),
       "triple": lambda p, b, i: (_loss(p, b, i), {}, 0)}[out]
  _raises_naming(lambda: train.fit(f, VARS, optax.sgd(0.1), (X, np.zeros(N)), steps=1,
                                   has_aux=True), "has_aux", ValueError)


@SETTINGS
@given(leaf=st.sampled_from([np.array(["a"] * N), np.array([object()] * N, dtype=object)]),
       where=st.integers(0, 1))
def test_fit_names_a_data_leaf_that_is_not_numeric(leaf, where):
  batch = [X, np.zeros(N)]
  batch[where] = leaf
  _raises_naming(lambda: train.fit(_loss, VARS, optax.sgd(0.1), tuple(batch), steps=1),
                 f"data[{where}]", TypeError)


@SETTINGS
@given(bad=st.one_of(st.text(min_size=1, max_size=4), st.just(np.array([0.1, 0.2])),
                     st.just(1j)))
def test_thresholds_that_are_not_numbers_are_named(bad):
  _raises_naming(lambda: train.fit(_loss, VARS, optax.sgd(0.1), (X, np.zeros(N)), steps=1,
                                   stop_below={"loss": bad}), "stop_below['loss']")
  _raises_naming(lambda: train.train(NET.model.apply, VARS, optax.sgd(0.1), X,
                                     np.zeros((N, 1)), steps=1, stop_below=bad), "stop_below")


@SETTINGS
@given(bad=st.one_of(st.integers(), st.floats(allow_nan=False), st.just(""), st.just(["a"]),
                     st.booleans()))
def test_load_mnist1d_names_a_cache_dir_that_is_not_a_path(bad):
  _raises_naming(lambda: data.load_mnist1d(num_samples=100, cache_dir=bad), "cache_dir")

