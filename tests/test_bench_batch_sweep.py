"""The batch-size sweep's read-outs and grid widening (no training: fake runs, milliseconds).

The sweep itself is smoke-run by ``make bench-quick`` (``--quick``, < 1 min)."""
import numpy as np
import pytest

from benchmarks import bench_batch_sweep as B


def _row(method, b, value, seed=0, *, acc, loss, steps=(1, 10, 100), full=False,
         diverged=False, one_off=0.0):
  """A stored row with curves ``acc``/``loss`` at ``steps`` (1 s per 100 steps)."""
  return dict(method=method, batch=b, value=float(value), lr=float(value), seed=seed,
              full=full, diverged=diverged, curve_step=list(steps),
              curve_time=[s / 100 for s in steps], curve_acc=list(acc),
              curve_train_loss=list(loss), final_acc=acc[-1], final_train_loss=loss[-1],
              one_off_s=one_off, per_step_ms=10.0)


def test_lattice_and_eval_steps():
  assert [B.lattice(j) for j in (-4, -3, -2, -1, 0, 1, 2)] == pytest.approx(
      [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
  s = B.eval_steps(2000, 1.06)
  assert s[0] == 1 and s[-1] == 2000 and s == sorted(set(s))
  gaps = np.diff(s) / np.asarray(s[:-1])
  # each evaluation is ~6 % after the previous one, up to rounding to whole steps
  assert np.all(gaps <= 0.06 + 1.0 / np.asarray(s[:-1]))


def test_targets_from_the_best_full_batch_baseline():
  rows = [_row("sgd", 4000, 1.0, acc=[0.1, 0.5, 0.60], loss=[2, 1, 0.3], full=True),
          _row("adam", 4000, 0.01, acc=[0.1, 0.6, 0.65], loss=[2, 1, 0.1], full=True),
          _row("adam", 4000, 0.1, acc=[0.1, 0.9, 0.99], loss=[2, 1, 0.0], full=True,
               diverged=True),                       # diverged runs never set the target
          _row("adam", 128, 0.01, acc=[0.1, 0.7, 0.9], loss=[2, 1, 0.01])]  # not full batch
  tg = B.targets(rows)
  # the lower of the baselines' best finals (sgd 0.60) − the margin: 0.58
  assert tg["acc"] == pytest.approx(0.60 - B.ACC_MARGIN)
  # the best run (adam, final 0.65) first reaches 0.58 at step 10, train CE 1 there
  assert tg["loss"] == pytest.approx(1.0) and tg["loss_step"] == 10
  assert tg["source"] == "adam lr 0.01" and tg["low"] == "sgd lr 1"
  # a second sgd run with a higher final raises sgd's best and the target with it (0.61):
  # adam first reaches that at step 100 (CE 0.1)
  more = rows + [_row("sgd", 4000, 0.3, acc=[0.1, 0.62, 0.63], loss=[2, 0.5, 0.2], full=True)]
  tg2 = B.targets(more)
  assert tg2["acc"] == pytest.approx(0.63 - B.ACC_MARGIN)
  assert tg2["loss"] == pytest.approx(0.1) and tg2["loss_step"] == 100
  assert B.targets(rows[3:]) is None


def test_first_reach_and_best_row():
  r = _row("sgd", 128, 0.1, acc=[0.1, 0.5, 0.7], loss=[2.0, 0.5, 0.1])
  assert B.first_reach(r, "curve_acc", 0.5, True) == (10, 0.1)
  assert B.first_reach(r, "curve_train_loss", 0.4, False) == (100, 1.0)
  assert B.first_reach(r, "curve_acc", 0.8, True) == (None, None)
  tg = dict(acc=0.5, loss=0.4)
  slow = _row("sgd", 128, 0.03, acc=[0.1, 0.2, 0.6], loss=[2.0, 1.0, 0.3])
  assert B.best_row([slow, r], tg) is r
  assert B.best_row([slow, r], tg, "loss") is r
  assert B.best_row([slow], dict(acc=0.9, loss=0.0), "acc") is None


@pytest.mark.parametrize("smin,bcrit", [(50.0, 300.0), (200.0, 2000.0)])
def test_critical_batch_recovers_an_exact_curve(smin, bcrit):
  bs = [128, 256, 512, 1024, 2048, 4000]
  pts = [(b, smin * (1 + bcrit / b)) for b in bs]
  got_smin, got_b = B.critical_batch(pts)
  # exact data: only least-squares round-off (float64) separates the fit from the truth
  assert got_smin == pytest.approx(smin, rel=1e-9)
  assert got_b == pytest.approx(bcrit, rel=1e-9)
  assert B.critical_batch(pts[:2]) == (None, None)


class _FakeSweep(B.Sweep):
  """A Sweep whose runs are a closed form: steps to the targets grow with |j − best|."""

  def __init__(self, best_j, diverge_above=None):
    self.quick, self.n, self.rows, self.ran = False, 4000, [], []
    self.best_j, self.diverge_above = best_j, diverge_above

  def run(self, method, b, value, seed, tg=None):
    j = _index(value)
    self.ran.append(j)
    if self.diverge_above is not None and j > self.diverge_above:
      return _row(method, b, value, acc=[0.1, 0.1, 0.1], loss=[2, 9, 99], diverged=True)
    d = abs(j - self.best_j)
    steps = (1, 10 * (d + 1), 100 * (d + 1))
    return _row(method, b, value, acc=[0.1, 0.6, 0.7 - 0.01 * d], loss=[2.0, 0.3, 0.1],
                steps=steps)


def _index(value):
  """Inverse of B.lattice."""
  for j in range(-20, 20):
    if abs(B.lattice(j) - value) <= 1e-9 * value:
      return j
  raise AssertionError(value)


@pytest.mark.parametrize("best_off,expect_span", [
    (0, (-1, 1)),          # best inside the first grid: no widening
    (-2, (-3, 1)),         # best two below: widened to one past it
    (2, (-1, 3)),
    (-9, (-1 - B.MAX_WIDEN, 1)),   # beyond the widening limit: stops there (edge)
])
def test_tune_widens_until_the_best_is_inside(best_off, expect_span):
  j0 = B.START["sgd"](128, 4000)
  sw = _FakeSweep(j0 + best_off)
  rows = sw.tune("sgd", 128, 0, dict(acc=0.5, loss=0.4))
  js = sorted(_index(r["value"]) for r in rows)
  assert (js[0] - j0, js[-1] - j0) == expect_span
  assert js == list(range(js[0], js[-1] + 1))        # contiguous, each value run once
  assert len(sw.ran) == len(set(sw.ran))


def test_tune_does_not_widen_past_a_diverged_value():
  j0 = B.START["adam"](128, 4000)
  sw = _FakeSweep(j0 + 5, diverge_above=j0 + 2)      # best would be higher, but diverges
  rows = sw.tune("adam", 128, 0, dict(acc=0.5, loss=0.4))
  js = sorted(_index(r["value"]) for r in rows)
  assert js[-1] == j0 + 3 and js[0] == j0 - 1
