"""Nyström MSK vs the exact Mercer MSK on the circle S¹, as the number of points grows.

Command::

  python -m mskjax.run configs/msk_approximation.py
  python -m mskjax.run configs/msk_approximation.py quick=True   # < 60 s

On S¹ a dot-product kernel k(x, x') = κ(cos(θ − θ')) has the Fourier modes as Mercer
eigenfunctions and its Fourier coefficients a_j (computed by FFT of κ on a fine grid) as
operator eigenvalues (multiplicity 2 for j > 0). The exact Mercer MSK replaces a_j by
g(a_j) for |j| ≤ m; the Nyström MSK built from n random points replaces the top k = 2m+1
Gram eigenvalues. g must be 1-homogeneous (flatten, scale, geometric mean with λ_{k+1}) so
that it acts the same on Gram (≈ n a_j) and operator eigenvalues. Table: sup error on a
grid, averaged over seeds, and the fitted log-log slope (Monte-Carlo rate -1/2 expected).
"""
import ml_collections
import numpy as np


def get_config():
  c = ml_collections.ConfigDict()
  c.quick = False
  c.ns = (32, 64, 128, 256, 512, 1024, 2048)
  c.m = 3                    # modified frequencies 0..m  ->  k = 2m + 1
  c.modifiers = ("flatten", "scale0.3", "geomean")
  c.seeds = 3
  c.grid = 64                # evaluation grid on S¹
  c.b_std = 1.0              # bias: Fourier coefficients then decrease with frequency
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"ns": {"min": 8}, "m": {"min": 0}, "seeds": {"min": 1}, "grid": {"min": 4},
          "b_std": {"min": 0}}


def validate(c):
  if 2 * c.m + 1 >= min(c.ns):
    raise ValueError(f"m: k = 2m+1 = {2 * c.m + 1} must be < the smallest n = {min(c.ns)}.")


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt

  import mskjax
  from mskjax import data, modifiers, nets

  ns = tuple(n for n in config.ns if n <= 256) if config.quick else tuple(config.ns)
  seeds = 1 if config.quick else config.seeds
  kernel_fn = nets.stax_mlp(nets.MLPSpec(depth=1, width=1, activation="relu",
                                         b_std=config.b_std))[2]
  # κ(cos φ) on a fine grid -> Fourier coefficients (operator eigenvalues, uniform measure).
  fine = 4096
  phi = 2 * np.pi * np.arange(fine) / fine
  xf = np.stack([np.cos(phi), np.sin(phi)], 1)
  kappa = np.asarray(kernel_fn(xf[:1], xf, "ntk"))[0]
  a = np.fft.rfft(kappa).real / fine
  m, k = config.m, 2 * config.m + 1
  op = np.concatenate([[a[0]], np.repeat(a[1:m + 2], 2)])
  if np.any(np.diff(op) > 0):
    raise ValueError("the kernel's Fourier coefficients are not decreasing up to m; "
                     "choose a smaller m or another b_std")
  grid_theta = 2 * np.pi * (np.arange(config.grid) + 0.5) / config.grid
  grid = np.stack([np.cos(grid_theta), np.sin(grid_theta)], 1)
  base = np.asarray(kernel_fn(grid, grid, "ntk"))
  delta = np.subtract.outer(grid_theta, grid_theta)

  rows = []
  for name in ctx.progress(config.modifiers, desc="modifiers"):
    g = modifiers.from_name(name)
    new = np.asarray(g(jnp.asarray(op), k))
    exact = base + (new[0] - a[0])
    for j in range(1, m + 1):
      exact = exact + 2 * (new[2 * j - 1] - a[j]) * np.cos(j * delta)
    errs = []
    for n in ns:
      def compute():
        e = []
        for s in range(seeds):
          x, _ = data.circle(n, equispaced=False, key=jax.random.PRNGKey(1000 * s + n))
          kg = mskjax.msk_kernel_fn(kernel_fn, x, g, k, tie_rtol=0.0)
          e.append(float(np.abs(np.asarray(kg(grid)) - exact).max()))
        return dict(modifier=name, n=n, sup_error=float(np.mean(e)),
                    rel_sup_error=float(np.mean(e) / np.abs(exact).max()))
      rec = ctx.cached(f"{name}/n={n}", compute)
      errs.append(rec["sup_error"])
      rows.append({c: rec[c] for c in ("modifier", "n", "sup_error", "rel_sup_error")})
    slope = float(np.polyfit(np.log(ns), np.log(errs), 1)[0])
    for r in rows:
      if r["modifier"] == name:
        r["loglog_slope"] = slope
  ctx.write_table(rows)

  fig, ax = plt.subplots(figsize=(5, 3.6))
  for name in config.modifiers:
    rs = [r for r in rows if r["modifier"] == name]
    ax.loglog([r["n"] for r in rs], [r["sup_error"] for r in rs], "o-",
              label=f"{name} (slope {rs[0]['loglog_slope']:.2f})")
  ref_n = np.array(ns, float)
  ax.loglog(ref_n, rows[0]["sup_error"] * (ref_n / ref_n[0]) ** -0.5, "k--", lw=0.8,
            label="n^-1/2")
  ax.set(xlabel="n (random points on S¹)", ylabel="sup |k_g Nyström − k_g Mercer|",
         title=f"Nyström MSK → Mercer MSK (k = {k})")
  ax.legend(fontsize=7)
  ctx.savefig(fig, "nystrom_convergence")
