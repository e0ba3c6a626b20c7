"""How large must `msk_directions(..., subsample=s)` be for its values to stand for the
spectrum on all n points?

The values are eigenvalues of the kernel on the s chosen points (to the solver's tol);
EigenPro-style, values·n/s estimate λ_i of the n-point kernel. This measures that estimate's
relative error against the n-point empirical NTK's eigenvalues (numpy eigvalsh: the
oracle), for λ₁ and for the worst of λ₁..λ_{k+1}, over 8 subsample keys, as s grows
relative to k. MNIST-1D inputs, c = 1 output, MSE (K_H = the empirical NTK), float64.

    PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.bench_subsample_error
    PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.bench_subsample_error --nets mlp_erf --n 400
"""
import argparse
import warnings

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--n", type=int, default=800)
  ap.add_argument("--nets", default="mlp,mlp_erf,cnn")
  ap.add_argument("--ks", default="1,5")
  ap.add_argument("--ratios", default="1.2,2,5,10,20,50,100")
  ap.add_argument("--seeds", type=int, default=8)
  args = ap.parse_args(argv)
  with jax.enable_x64(True):
    import mskjax
    from mskjax import data, modifiers
    from mskjax.nets import CNNSpec, MLPSpec, make_network
    warnings.simplefilter("ignore")
    n = args.n
    x = np.asarray(data.load_mnist1d(num_samples=5000).x_train[:n], np.float64)
    specs = {"mlp": (MLPSpec(depth=2, width=128, out_dim=1, b_std=0.1), x),
             "mlp_erf": (MLPSpec(depth=3, width=256, activation="erf", W_std=1.5, out_dim=1,
                                 b_std=0.2), x),
             "cnn": (CNNSpec(channels=(16, 16), kernel_sizes=5, out_dim=1, spatial_dims=1),
                     x[..., None])}
    print("| net | n | k | s | s/(k+1) | λ₁ rel. err. median (max) | max_{i≤k+1} rel. err. "
          "median (max) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.nets.split(","):
      spec, xx = specs[name]
      model = make_network(spec).model
      v = model.init(jax.random.PRNGKey(0), jnp.asarray(xx[:2]))
      K = np.asarray(mskjax.empirical_ntk(model.apply, v, jnp.asarray(xx)))
      lam = np.linalg.eigvalsh(K)[::-1]
      for k in map(int, args.ks.split(",")):
        for ratio in map(float, args.ratios.split(",")):
          s = int(round(ratio * k))
          if s > n - 1 or s < 2 or s <= k:
            continue
          e1, ek = [], []
          for seed in range(args.seeds):
            d = mskjax.msk_directions(model.apply, v, jnp.asarray(xx), modifiers.flatten(), k,
                                      subsample=s, key=jax.random.PRNGKey(seed),
                                      compute_beta=False)
            est = np.append(np.asarray(d.values), float(d.next_value)) * n / s
            rel = np.abs(est / lam[:k + 1] - 1)
            e1.append(rel[0])
            ek.append(rel.max())
          print(f"| {name} | {n} | {k} | {s} | {s / (k + 1):.1f} | {np.median(e1):.3f} "
                f"({np.max(e1):.3f}) | {np.median(ek):.3f} ({np.max(ek):.3f}) |", flush=True)


if __name__ == "__main__":
  main()
