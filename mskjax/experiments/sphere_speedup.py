"""Polynomial speed-up of MSK-preconditioned GD on the sphere (S¹ and S²).

Command::

  python -m mskjax.run configs/sphere_speedup.py              # full, ~15 min on a 2-core CPU
  python -m mskjax.run configs/sphere_speedup.py:quick     # < 60 s (S¹ only, small js)

Claim (Geifman et al., arXiv:2307.14531, §4): on the sphere the NTK eigenvalue of frequency
(degree) j decays polynomially, λ_j ~ j^{-d} on S^{d-1}, so GD needs ~ j^d iterations to
learn it; flattening the top k eigenvalues (``modifiers.flatten``, step η = 1/λ_{k+1})
learns every direction inside the band in one step and every direction beyond it
λ₁/λ_{k+1} times faster — a polynomial speed-up.

Set-up. 2-layer ReLU network, NTK parameterisation, b_std = 0.1 (with b_std = 0 odd
frequencies ≥ 3 have eigenvalue 0 on S¹), antisymmetric zero-output init.

* S¹: n = 64 equispaced points, targets cos(jθ). k ∈ ``s1_ks`` at block boundaries of the
  Gram spectrum (2m+1). The ReLU NTK does not order frequencies monotonically (odd j ≥ 3
  sit below the next even one), so the band of k = 11 is {0,1,2,3,4,6}; the ``in_band``
  column says whether j's eigen-pair is among the top k.
* S²: n = ``s2_n`` random points on S² (``data.sphere``), targets the normalised zonal
  harmonic of degree j (``data.zonal_harmonic_target``). k = number of eigenvalues in the
  first ``s2_blocks`` degree blocks (2l+1 each), the degrees ordered by their Mercer
  (Funk–Hecke) eigenvalue μ_l = 2π∫κ(t)P_l(t)dt: 0,1,2,4,3,6,5,... → k = 4, 9, 18, 25.
  (The suggested (m+1)² = 16 would cut the degree-4 block, which lies above degree 3.)

Measured (``results.csv``, one row per sphere, j, method, k):

* ``predicted_steps``: ``mskjax.steps_to_tolerance`` on the analytic Gram matrix — the
  smallest t with ‖(I − η K_g)^t y‖ < tol‖y‖, η = 1/λ_max(K_g) (GD: g = identity);
* ``network_steps``: a finite network (width in the table, targets of amplitude
  ``amp`` = 0.01 to stay in the linear regime) trained with ``T.train`` (GD: optax.sgd,
  PGD: ``mskjax.msk_sgd``) until ‖r_t‖ < tol‖y‖. Its η and the PGD directions come from
  the *empirical* NTK at initialisation (stable for large k; tests/test_train.py);
* ``speedup`` = GD steps / PGD steps at the same j (predicted; ``network_speedup`` for the
  network); ``bound`` = λ₁/λ_{k+1}, the speed-up for j beyond the band.

``fits.csv``: least-squares slopes of log(steps) against log(j) over j ≥ ``fit_jmin``, for
GD (all j, and even j only) and, for PGD, the largest step count inside the band and the slope beyond it.

Plot ``steps_vs_j.png``: iterations against j (log-log), lines = prediction, markers =
network, one colour per method/k, one panel per sphere.
"""
import numpy as np


def _fit_slope(js, steps):
  js, steps = np.asarray(js, float), np.asarray(steps, float)
  ok = np.isfinite(steps) & (steps > 0) & (js > 0)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(np.log(js[ok]), np.log(steps[ok]), 1)[0])


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import optax

  import mskjax
  from mskjax import data, kernels, tangents, nets
  from mskjax import train as T

  s = config
  g = mskjax.modifiers.flatten()
  net = nets.make_network(nets.MLPSpec(depth=1, width=s["width"], b_std=config.b_std),
                          antisymmetric=True)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)  # noqa: E731
  rows = []

  def measure(tag, x, y, K0, variables, method, k, pred, key):
    """Network iterations to ‖r‖ < tol‖y‖ (cached); None when the budget runs out."""
    def compute():
      if method == "GD":
        eta = mskjax.steps.kernel_step(jnp.linalg.eigvalsh(K0)[-1])
        tx = optax.sgd(eta)
      else:
        spec0 = mskjax.msk_spectrum(K0, g, k)          # empirical NTK at init (see docstring)
        eta = mskjax.steps.kernel_step(spec0)
        # The fixed preconditioner P of the network's own empirical NTK at init, from its
        # exact top-k directions (tol < 1e-4: one dense eigh): P Jᵀ r = Jᵀ S r, the paper's
        # PGD (docs/theory.md#the-preconditioner-p-parameter-space); the small target
        # amplitude keeps J near its initial value, so P stays exact.
        directions = mskjax.msk_directions(net.model.apply, variables, x, g, k,
                                           method="dense", tol=1e-6)
        tx = mskjax.msk_sgd(eta, directions)
      budget = int(min(config.network_budget * pred + 10, config.max_steps))
      res = T.train(apply_fn, variables["params"], tx, x, y, steps=budget, progress=False)
      rel = np.sqrt(2 * np.asarray(res.loss)) / float(jnp.linalg.norm(y))
      hit = np.nonzero(rel < config.tol)[0]
      return dict(network_steps=int(hit[0]) if hit.size else None, budget=budget,
                  final_rel_residual=float(rel[-1]), eta=eta, width=s["width"])
    return ctx.cached(f"{tag}/network/{key}", compute)

  def sphere_rows(tag, x, targets, K, lam_j, in_band_fn, ks, network_js, do_network):
    lam = np.asarray(mskjax.eigh_desc(K).values)

    def predicted(y, k):
      # K is one jax.Array: the library diagonalises it once and reuses it for every y, g.
      return mskjax.steps_to_tolerance(K, y, g if k else None, k, tol=config.tol)

    K0 = variables = None
    if do_network and network_js:
      variables = nets.init_zero_output(net.model, jax.random.PRNGKey(config.seed), x)
      K0 = tangents.empirical_ntk(net.model.apply, variables, x, implementation=1, block_size=100)
    out = []
    for j in ctx.progress(sorted(targets), desc=f"{tag} targets"):
      y = config.amp * targets[j]
      gd_pred = gd_net = None
      for method, k in [("GD", None)] + [("PGD", k) for k in ks]:
        key = f"j={j}/{method}/k={k}"
        pred = ctx.cached(f"{tag}/pred/{key}",
                          lambda: dict(predicted_steps=int(predicted(y, k))))
        p = pred["predicted_steps"]
        row = dict(sphere=tag, j=j, lambda_j=float(lam_j[j]), method=method,
                   k="" if k is None else k,
                   in_band="" if k is None else bool(in_band_fn(j, k)),
                   predicted_steps=p)
        if method == "GD":
          gd_pred = p
        row["speedup"] = gd_pred / p
        row["bound"] = 1.0 if k is None else float(lam[0] / lam[k])
        if do_network and j in network_js:
          m = measure(tag, x, y, K0, variables, method, k, p, key)
          row.update(network_steps=m["network_steps"], width=m["width"])
          if method == "GD":
            gd_net = m["network_steps"]
          if gd_net and m["network_steps"]:
            row["network_speedup"] = gd_net / m["network_steps"]
        out.append(row)
    return out

  # ------------------------------------------------------------------ S¹
  x1, th = data.circle(config.s1_n)
  K1 = kernels.gram(net.kernel_fn, x1)
  lam1 = np.asarray(mskjax.eigh_desc(K1).values)
  K1n = np.asarray(K1)
  jmax = max(s["s1_js"])
  four = {j: np.cos(j * np.asarray(th)) for j in range(jmax + 1)}
  lam_s1 = {j: float(v @ K1n @ v / (v @ v)) for j, v in four.items()}   # exact on the grid

  def in_band_s1(j, k):
    return lam_s1[j] >= lam1[k - 1] * (1 - 1e-9)

  for k in s["s1_ks"]:
    if abs(lam1[k - 1] - lam1[k]) <= 1e-9 * lam1[0]:
      raise ValueError(f"s1_ks: k={k} splits a pair of the S¹ spectrum; use k = 2m+1.")
  targets1 = {j: data.fourier_target(th, j) for j in s["s1_js"]}
  rows += sphere_rows("S1", x1, targets1, K1, lam_s1, in_band_s1, s["s1_ks"],
                      s["s1_js"], s["s1_network"])

  # ------------------------------------------------------------------ S²
  ks2 = []
  if s["s2"]:
    x2 = data.sphere(config.s2_n, 3, jax.random.PRNGKey(config.seed + 1))
    K2 = kernels.gram(net.kernel_fn, x2)
    lmax = max(max(config.s2_js), 2 * max(config.s2_blocks) + 4)
    mu = kernels.sphere_mercer_eigenvalues(net.kernel_fn, 3, lmax)
    order = [int(l) for l in np.argsort(-mu)]
    ks2 = [int(np.sum([2 * l + 1 for l in order[:b]])) for b in config.s2_blocks]
    band2 = {k: set(order[:b]) for k, b in zip(ks2, config.s2_blocks)}
    ctx.log_metrics(dict(s2_degree_order=order[:12], s2_mercer=mu[:12].tolist(), s2_ks=ks2))
    ctx.print(f"S²: degrees by Mercer eigenvalue {order[:8]} -> k = {ks2}")
    targets2 = {j: data.zonal_harmonic_target(x2, j) for j in config.s2_js}
    rows += sphere_rows("S2", x2, targets2, K2, {l: float(mu[l]) for l in range(lmax + 1)},
                        lambda j, k: j in band2[k], ks2,
                        tuple(config.s2_network_js), config.s2_network)

  cols = ["sphere", "j", "lambda_j", "method", "k", "in_band", "predicted_steps",
          "network_steps", "speedup", "network_speedup", "bound", "width"]
  ctx.write_table(rows, columns=cols)

  # ------------------------------------------------------------------ fits
  fits = []
  for sph, ks in (("S1", s["s1_ks"]), ("S2", ks2)):
    srows = [r for r in rows if r["sphere"] == sph]
    if not srows:
      continue
    for method, k in [("GD", "")] + [("PGD", k) for k in ks]:
      mr = [r for r in srows if r["method"] == method and r["k"] == k]
      for src, col in (("predicted", "predicted_steps"), ("network", "network_steps")):
        pts = [(r["j"], r.get(col)) for r in mr if r.get(col) is not None]
        if len(pts) < 2:
          continue
        js, st = map(np.array, zip(*pts))
        st = st.astype(float)
        f = dict(sphere=sph, method=method, k=k, source=src)
        if method == "GD":
          lo = js >= config.fit_jmin
          f["slope_all_j"] = _fit_slope(js[lo], st[lo])
          even = lo & (js % 2 == 0)
          f["slope_even_j"] = _fit_slope(js[even], st[even])
        else:
          band = {r["j"]: r["in_band"] for r in mr}
          inb = np.array([band[j] for j in js], bool)
          f["max_steps_in_band"] = int(st[inb].max()) if inb.any() else ""
          out = ~inb & (js >= config.fit_jmin)
          f["slope_beyond_band"] = _fit_slope(js[out], st[out])
          f["n_beyond"] = int(out.sum())
        fits.append(f)
  if fits:
    ctx.write_table(fits, name="fits", columns=["sphere", "method", "k", "source",
                                                "slope_all_j", "slope_even_j",
                                                "max_steps_in_band", "slope_beyond_band",
                                                "n_beyond"])
  ctx.log_metrics(dict(fits=fits))

  # ------------------------------------------------------------------ plot
  spheres = [sp for sp in ("S1", "S2") if any(r["sphere"] == sp for r in rows)]
  fig, axes = plt.subplots(1, len(spheres), figsize=(6 * len(spheres), 4.6), squeeze=False,
                           layout="constrained")
  for ax, (sph, ks) in zip(axes[0], [(sp, s["s1_ks"] if sp == "S1" else ks2)
                                     for sp in spheres]):
    for i, (method, k) in enumerate([("GD", "")] + [("PGD", k) for k in ks]):
      mr = [r for r in rows if r["sphere"] == sph and r["method"] == method and r["k"] == k]
      color = "k" if method == "GD" else f"C{i}"
      label = "GD" if method == "GD" else f"PGD flatten k={k}"
      js = [r["j"] for r in mr]
      ax.plot(js, [r["predicted_steps"] for r in mr], "-", color=color, lw=1.5,
              label=f"{label} (predicted)")
      net_pts = [(r["j"], r["network_steps"]) for r in mr if r.get("network_steps")]
      if net_pts:
        ax.plot(*zip(*net_pts), "o", color=color, ms=6, mfc="none", mew=1.5,
                label=f"{label} (width {s['width']})")
    ax.set(xscale="log", yscale="log", xlabel="frequency / degree j",
           ylabel=f"iterations to ‖r‖ < {config.tol}‖y‖",
           title=(f"S¹, n={config.s1_n} equispaced, cos(jθ)" if sph == "S1" else
                  f"S², n={config.s2_n} random, zonal harmonic deg j"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"2-layer ReLU NTK (b_std={config.b_std}): GD vs MSK-PGD (flatten top k)")
  ctx.savefig(fig, "steps_vs_j")
  return rows
