"""configs/mnist1d.py and its program mskjax/experiments/mnist1d.py: architectures, optimisers,
the training run through train.fit and the time-to-accuracy read-out (tiny data)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mskjax import optim
from mskjax.experiments import mnist1d as B
from mskjax.run import load_config


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


def test_train_run_records_accuracy_and_first_reach():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  v = B.init_params("mlp", x)
  rec = B.train_run("mlp", v["params"], optax.adam(1e-2), x, y, x, y, batch_size=16, steps=40,
                    eval_every=10)
  assert rec["curve_step"] == [0, 10, 20, 30, 40] and not rec["diverged"]
  logits = B.model("mlp").apply(v, x)   # step-0 accuracy: an independent evaluation
  assert rec["curve_acc"][0] == pytest.approx(float(np.mean(np.argmax(logits, 1) == y)))
  assert rec["final_acc"] > 0.5          # 64 random labels are memorised by a 78k-param MLP
  st, t = B.first_reach(rec, rec["curve_acc"][2], offset_s=5.0)
  assert st <= 20 and t >= 5.0
  assert B.first_reach(rec, 1.01) == (None, None)
  d = optim.MSKDirections(jax.tree.map(lambda a: jnp.zeros((1,) + a.shape, a.dtype),
                                       v["params"]), jnp.ones(1), jnp.ones(1), jnp.ones(()))
  assert B.make_tx("pgd", 0.1, directions=d) is not None
  with pytest.raises(ValueError, match="directions"):
    B.make_tx("pgd", 0.1)
  with pytest.raises(ValueError, match="method"):
    B.make_tx("lbfgs", 0.1)


def test_quick_config_is_resolved_inside_and_small():
  s = load_config("configs/mnist1d.py:quick")
  assert all(steps <= 200 for _, _, steps, _ in s.settings)
  assert len(s.sgd_lrs) == len(s.adam_lrs) == len(s.pgd_lrs) == 1
