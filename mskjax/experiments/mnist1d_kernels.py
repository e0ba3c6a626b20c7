"""MNIST-1D at infinite width: the analytic NTK of the benchmark's MLP and 1-D CNN.

Command::

  python -m mskjax.run configs/mnist1d_kernels.py --tag full
  python -m mskjax.run configs/mnist1d_kernels.py:quick     # < 60 s (n = 500)

Architectures (the same as the finite MNIST-1D benchmark, ``mskjax/experiments/mnist1d.py``):
MLP 40 → 256 → 256 → 10 and CNN on (n, 40, 1): three convolutions with 32 channels, kernel sizes (5, 3, 3), stride 2,
'SAME', ReLU, flatten (5·32 = 160) → Dense(10). The finite nets use flax's defaults: standard
parameterisation, weights of variance 1/fan_in (lecun_normal), trainable biases initialised at
0. The analytic kernel that corresponds is neural-tangents' *standard* parameterisation at the
benchmark's widths with W_std = 1, b_std = 0 (``CNNSpec(..., parameterization='standard',
b_std=0.0)``): its NTK is the infinite-width limit of E[Θ̂₀] *with the finite widths as
fan-ins* (each layer adds fan_in · Σ_l + 1 for its bias), i.e. the kernel whose gradient
flow the flax net follows in the lazy regime. Rows with parameterisation 'ntk' are the
NTK-parameterised twin (same architecture, every layer's weight term weighted equally); it is
the usual "infinite-width CNN" of Novak et al. / Arora et al.

Per kernel: kernel regression (t = ∞) and kernel GD on ½‖f(X) − Y‖² with one-hot targets Y
(10 outputs, f₀ = 0) at t steps of η = 1/λ_max(K_g), through ``mskjax.predict_gd_mse``;
test accuracy = argmax of the 10 regression outputs. Modifiers g (``'NAME@k'``: a
``mskjax.modifiers.from_name`` name on the top k, see :func:`mskjax.modifiers.from_spec`) act on the Gram
eigenvalues (η grows to 1/λ_max(K_g)); at t = ∞ every g gives the same interpolant
(docs/theory.md#same-final-solution).
Cost table: time and XLA temporary memory per kernel entry, measured on one block, and the n
that the dense path (Gram + eigh in float64) and a one-hour Gram allow, extrapolated from it.
"""
import numpy as np


def _load_mnist1d(n_train, n_test, seed):
  """MNIST-1D as (x (n, 40, 1), labels) from the generator (never the download path)."""
  import mnist1d.data
  d = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  rng = np.random.default_rng(seed)
  tr = np.sort(rng.permutation(len(d["y"]))[:n_train])
  te = np.sort(rng.permutation(len(d["y_test"]))[:n_test])
  x, y = np.asarray(d["x"], float)[tr], np.asarray(d["y"])[tr]
  xt, yt = np.asarray(d["x_test"], float)[te], np.asarray(d["y_test"])[te]
  return x[:, :, None], y, xt[:, :, None], yt


def _spec(net, parameterization):
  from mskjax import nets
  if net == "mlp":   # an MLP is a CNNSpec without conv layers (flatten of (40, 1) = 40)
    return nets.CNNSpec(channels=(), dense=(256, 256), out_dim=10, b_std=0.0,
                        parameterization=parameterization)
  if net == "cnn":
    return nets.CNNSpec(channels=(32, 32, 32), kernel_sizes=(5, 3, 3), strides=2,
                        padding="SAME", readout="flatten", out_dim=10, b_std=0.0,
                        parameterization=parameterization)
  raise ValueError(f"unknown net {net!r}; use 'mlp' or 'cnn'")


def _cost(kernel_fn, x, b):
  """Seconds and XLA temporary bytes per kernel entry on one b × b block (compiled once)."""
  import time
  import jax
  f = jax.jit(lambda a, c: kernel_fn(a, c, "ntk"))
  comp = f.lower(x[:b], x[b:2 * b]).compile()
  temp = comp.memory_analysis().temp_size_in_bytes
  comp(x[:b], x[b:2 * b]).block_until_ready()
  t0 = time.perf_counter()
  comp(x[:b], x[b:2 * b]).block_until_ready()
  return (time.perf_counter() - t0) / b ** 2, temp / b ** 2


def run(config, ctx):
  import time

  import jax.numpy as jnp

  import mskjax
  from mskjax import nets

  n_train = config.n_train
  n_test = config.n_test
  params_list = tuple(config.parameterizations)
  mods = tuple(config.modifiers)
  x, y, xt, yt = _load_mnist1d(n_train, n_test, config.seed)
  Y = np.eye(10)[y]
  ctx.print(f"MNIST-1D: {n_train} train / {n_test} test, x {x.shape}")
  times = jnp.asarray(tuple(config.times) + (np.inf,))

  rows, cost_rows = [], []
  for net in config.nets:
    for par in params_list:
      spec = _spec(net, par)
      kernel_fn = nets.stax_cnn(spec)[2]

      def grams():
        t0 = time.perf_counter()
        K = mskjax.gram(kernel_fn, x, block_size=config.block_size)
        Kt = mskjax.gram(kernel_fn, xt, x, block_size=config.block_size)
        return K, Kt, time.perf_counter() - t0

      K, Kt, t_gram = grams()
      lam = np.linalg.eigvalsh(np.asarray(K))[::-1]
      ctx.print(f"{net}/{par}: Gram {n_train}² + {n_test}×{n_train} in {t_gram:.1f} s, "
                f"λ₁ = {lam[0]:.4g}, λ₁₁ = {lam[10]:.4g}, λ₁₀₁ = {lam[100]:.4g}")
      for mod in mods:
        g, k = mskjax.modifiers.from_spec(mod)

        def compute():
          # η = 1/λ_max(K_g) from the eigenvalues already computed (no second eigh).
          mu = lam if g is None else np.concatenate(
              [np.asarray(mskjax.modifiers.apply_modifier(g, jnp.asarray(lam), k)), lam[k:]])
          eta = mskjax.steps.kernel_step(np.max(mu))
          # One call per t (scalar t), as in the committed run: a t-array together with a
          # modifier once gave wrong train predictions on this kernel (η·g = 1 rounded in
          # two places); fixed since, a t-array call now matches per-t calls to 2e-16.
          outs = [mskjax.predict_gd_mse(K, Y, g, k, t, learning_rate=eta, K_test_train=Kt,
                                        **({} if g is None else {"tie_rtol": 0.0}))
                  for t in times]
          p = type(outs[0])(np.stack([o.train for o in outs]), np.stack([o.test for o in outs]))
          acc = np.mean(np.argmax(np.asarray(p.test), -1) == yt[None], axis=1)
          tr_acc = np.mean(np.argmax(np.asarray(p.train), -1) == y[None], axis=1)
          mse = np.mean(np.sum((np.asarray(p.test) - np.eye(10)[yt][None]) ** 2, -1), axis=1)
          return dict(eta=eta, test_acc=acc.tolist(), train_acc=tr_acc.tolist(),
                      test_mse=mse.tolist(), gram_s=t_gram)

        rec = ctx.cached(f"{net}/{par}/{mod}/n={n_train}", compute)
        for i, t in enumerate(np.asarray(times)):
          rows.append(dict(net=net, param=par, modifier=mod,
                           t="inf" if np.isinf(t) else int(t), eta=float(rec["eta"]),
                           train_acc=float(rec["train_acc"][i]),
                           test_acc=float(rec["test_acc"][i]),
                           test_mse=float(rec["test_mse"][i])))
      # Cost per entry (the 'gap' readout of the CNN: all pairs of positions, for contrast).
      variants = [(net, kernel_fn)]
      if net == "cnn" and par == "standard" and config.cost_gap:
        gap = spec.__class__(**{**spec.__dict__, "readout": "gap"})
        variants.append(("cnn-gap", nets.stax_cnn(gap)[2]))
      for name, kf in variants:
        if par != "standard":
          continue
        b = min(config.cost_block, n_train // 2)
        sec, byt = _cost(kf, jnp.asarray(x), b)
        mem = config.memory_gib * 2 ** 30
        n_dense = int(np.sqrt(mem / (8 * 4)))          # K, K_test (~K), eigh workspace ~2K
        n_hour = int(np.sqrt(2 * 3600 / sec))          # symmetric Gram in one hour
        cost_rows.append(dict(kernel=name, ns_per_entry=sec * 1e9,
                              temp_bytes_per_entry=byt,
                              gram_4000_s=sec * 4000 ** 2 / 2,
                              n_dense_fits=n_dense, n_gram_1h=n_hour,
                              n_max=min(n_dense, n_hour)))
  ctx.write_table(rows)
  ctx.write_table(cost_rows, name="cost")
  # Summary: test accuracy at t = ∞ and at the largest finite t, per kernel and modifier.
  t_last = int(config.times[-1])
  summ = []
  for r in rows:
    if r["t"] in ("inf", t_last):
      summ.append(r)
  ctx.write_table(summ, name="summary",
                  columns=["net", "param", "modifier", "t", "train_acc", "test_acc",
                           "test_mse"])
