"""One accelerator run: float32 MNIST-1D comparison, per-step costs, top-k timing → one table.

Run:  benchmarks/device.sh   (or  make bench-device;  python -m benchmarks.device --help)

Not used by CI. On a GPU/TPU host with jax installed for it:

1. the MNIST-1D comparison of ``configs/mnist1d.py`` (float32; by default every setting
   including the CNN at full batch, which the 2-core CPU runs skip) through the runner into
   ``<runs-dir>/mnist1d/<tag>/``;
2. the per-step cost of each method (best learning rate), from the same runs;
3. the top-k solve (``optim.msk_directions``: k directions of the full empirical NTK) on
   s = 1000 and 4000 training points per architecture, cold and warm;

then prints one markdown table with the device's name on every row.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path


def _device_name():
  import jax
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', str(d))}"


def topk_timing(arch: str, s: int, k: int):
  """Cold and warm seconds of the top-k solve on s training points (MNIST-1D, float32)."""
  import jax.numpy as jnp
  from mskjax.experiments import mnist1d as B
  from mskjax import data
  ds = data.load_mnist1d()
  x = B.inputs(arch, jnp.asarray(ds.x_train, jnp.float32))
  v = B.init_params(arch, x)
  sub = None if s >= x.shape[0] else s
  d, cold = B.build_directions(arch, v, x, k=k, subsample=sub)
  d, warm = B.build_directions(arch, v, x, k=k, subsample=sub)
  return dict(cold_s=cold, warm_s=warm, lam1_over_lamk1=float(d.values[0] / d.next_value))


def _fmt(v):
  try:
    return f"{float(v):.4g}" if v not in ("", None) and not isinstance(v, bool) else str(v)
  except (TypeError, ValueError):
    return str(v)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs-dir", default="runs/device")
  ap.add_argument("--tag", default=None, help="run tag (default: the device name)")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: the config's quick variant, top-k on 100 points (MLP)")
  ap.add_argument("--k", type=int, default=20)
  ap.add_argument("--skip-train", action="store_true")
  args, overrides = ap.parse_known_args(argv)
  import jax
  dev = _device_name()
  tag = args.tag or dev.replace(":", "-").replace(" ", "_")
  print(f"device {dev}, jax {jax.__version__}", flush=True)
  rows = []
  if not args.skip_train:
    from mskjax import run as R
    cfg_over = ([] if args.quick else [f"k={args.k}"]) + overrides   # quick: its own k = 10
    if not args.quick and not any(o.startswith("settings=") for o in overrides):
      cfg_over.append('settings=(("mlp",128,3000,100),("mlp",512,1500,50),("mlp",0,600,10),'
                      '("cnn",128,6000,200),("cnn",512,3000,100),("cnn",0,1000,25))')
    cfg = "configs/mnist1d.py" + (":quick" if args.quick else "")
    rc = R.main([cfg, *cfg_over, "--runs-dir", args.runs_dir, "--tag", tag, "--no-progress"])
    if rc:
      raise SystemExit(rc)
    out = Path(args.runs_dir) / "mnist1d" / tag
    with open(out / "results.csv") as f:
      for r in csv.DictReader(f):
        rows.append(dict(device=dev, part="mnist1d", arch=r["arch"], batch=r["batch"],
                         method=r["method"], lr=r["lr"], final_acc=r["final_acc"],
                         wall_s_to_target=r["wall_s_to_target"], per_step_ms=r["per_step_ms"],
                         one_off_s=r["one_off_s"]))
  sizes = [("mlp", 100)] if args.quick else [(a, s) for a in ("mlp", "cnn") for s in (1000, 4000)]
  for arch, s in sizes:
    if True:
      t0 = time.perf_counter()
      k = 10 if args.quick else args.k
      r = topk_timing(arch, s, k)
      rows.append(dict(device=dev, part=f"top-k (k={k}, s={s})", arch=arch,
                       one_off_s=f"{r['cold_s']:.3g} cold / {r['warm_s']:.3g} warm",
                       final_acc=f"λ1/λk+1={r['lam1_over_lamk1']:.3g}"))
      print(f"top-k {arch} s={s}: {time.perf_counter() - t0:.1f} s", flush=True)
  cols = ["device", "part", "arch", "batch", "method", "lr", "final_acc", "wall_s_to_target",
          "per_step_ms", "one_off_s"]
  print("\n| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
  main()
