r"""The one linear solver: preconditioned conjugate gradients on ``A X = B``, all columns at once.

:func:`pcg` solves ``A x_j = b_j`` for every column j of ``B`` (``A`` symmetric positive
definite, e.g. ``K + ridge·I``) by preconditioned CG (Hestenes & Stiefel 1952), one
independent recurrence per column with its own step sizes, all columns sharing each product
``A P`` (one pass over ``A`` per iteration for every output):

.. math::
  \alpha_j = \frac{r_j^\top z_j}{p_j^\top A p_j},\quad x_j \mathrel{+}= \alpha_j p_j,\quad
  r_j \mathrel{-}= \alpha_j A p_j,\quad z_j = M r_j,\quad
  p_j \leftarrow z_j + \frac{r_j^\top z_j}{r_{j,\text{old}}^\top z_{j,\text{old}}}\, p_j.

A column stops (its step becomes 0) once its relative residual ``‖r_j‖/‖b_j‖ <= rtol``; the
solve stops when every column has, or after ``max_iter`` iterations. With ``M ≈ A⁻¹`` the
error falls like ``2((√κ − 1)/(√κ + 1))^t`` in the ``A``-norm, κ the condition number of
``M A``.

**Why a hand-written loop** and not ``jax.scipy.sparse.linalg.cg``: that function runs the
whole solve inside one ``lax.while_loop``. The products here are long host loops over kernel
blocks (seconds to minutes each at large n), and a solve of many minutes needs what a
compiled loop cannot give: progress lines between iterations, a state saved to disk that a
later run resumes from with an identical continuation, a clean stop on ``KeyboardInterrupt``
that keeps the last iteration, and a relative tolerance per output column (jax's ``cg``
treats the columns as one vector: one step size and one stopping test for all). The CG
vectors are float64 numpy arrays (O(n·c) work per iteration beside the product and the
preconditioner).

**Checkpoints.** With ``checkpoint=PATH`` the state (iterate, residual, direction, the
scalars, the iteration count, the residual history) is written every ``checkpoint_every``
iterations, at the end, and when the solve is interrupted, atomically (a temporary file in
the same directory, then ``os.replace``). A later call with the same ``PATH`` and the same
``fingerprint`` (a description of the problem: sizes, dtypes, kernel, ridge,
preconditioner, a hash of the data) resumes from the saved iteration; another fingerprint
raises ``ValueError`` naming the fields that differ — a checkpoint is never mixed into
another problem.

References: Hestenes & Stiefel, *Methods of conjugate gradients for solving linear
systems*, J. Res. NBS 1952; Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed.,
SIAM 2003, Alg. 9.1 (preconditioned CG).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from mskjax import _validate as _v

__all__ = ["SolveProgress", "SolveInfo", "pcg", "fingerprint_arrays", "CHECKPOINT_VERSION",
           "checkpoint_path", "check_progress", "save_arrays", "load_arrays"]

CHECKPOINT_VERSION = 1
"""Format version stored in every checkpoint (a checkpoint of another version is refused)."""


class SolveProgress(NamedTuple):
  """One line of progress of :func:`pcg`, after each iteration.

  Attributes:
    iteration: iterations done (counting those before a resume).
    residual: the largest relative residual ``max_j ‖r_j‖/‖b_j‖``.
    residuals: ``(c,)`` relative residual per column.
    elapsed: seconds of solving so far (including the runs before a resume).
    converged: columns at or below ``rtol``.
    solution: the iterate ``X`` after this iteration, ``(n, c)`` float64 (the solver's own
      array: copy it to keep it; e.g. to follow a validation metric or stop early by raising
      ``KeyboardInterrupt``).
  """
  iteration: int
  residual: float
  residuals: np.ndarray
  elapsed: float
  converged: int
  solution: Optional[np.ndarray] = None


class SolveInfo(NamedTuple):
  """How :func:`pcg` ended.

  Attributes:
    iterations: iterations done (counting those before a resume).
    residuals: ``(c,)`` final relative residuals ``‖r_j‖/‖b_j‖`` (the recurrence's residual;
      it tracks ``‖b_j − A x_j‖`` to the accuracy of the products).
    converged: every column reached ``rtol``.
    elapsed: seconds of solving (including the runs before a resume).
    history: ``(iterations + 1, c)`` relative residuals after each iteration (row 0: start).
    resumed_from: the iteration the solve resumed from (0 for a fresh start).
    breakdown: ``(c,)`` bool, columns stopped because ``pᵀ A p <= 0`` (``A`` not positive
      definite to the products' accuracy).
    residual: ``(n, c)`` the recurrence's final residual ``r ≈ B − A X`` (so ``A X`` is known
      without another product).
  """
  iterations: int
  residuals: np.ndarray
  converged: bool
  elapsed: float
  history: np.ndarray
  resumed_from: int
  breakdown: np.ndarray
  residual: np.ndarray


def fingerprint_arrays(*arrays) -> str:
  """A SHA-256 hex digest of arrays' shapes, dtypes and bytes (the data part of a
  checkpoint's fingerprint).

  Example:
    >>> a = np.arange(3.0)
    >>> fingerprint_arrays(a) == fingerprint_arrays(a.copy()), fingerprint_arrays(a) == fingerprint_arrays(a + 1)
    (True, False)
  """
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _print_progress(p: SolveProgress, label: str = "pcg") -> None:
  print(f"{label}: iteration {p.iteration:4d}  relative residual {p.residual:.3e}  "
        f"({p.converged} of {p.residuals.size} outputs converged)  {p.elapsed:8.1f} s",
        file=sys.stderr, flush=True)


def check_progress(progress, label: str = "pcg"):
  """``progress`` as a callable receiving :class:`SolveProgress` (``True``: lines on stderr
  headed ``label``), or ``None``; anything else raises ``TypeError`` naming it."""
  if progress is None or progress is False:
    return None
  if progress is True:
    return lambda p: _print_progress(p, label)
  if callable(progress):
    return progress
  raise TypeError("`progress` must be True (lines on stderr), False, or a callable receiving "
                  f"a SolveProgress; got {type(progress).__name__} {progress!r}.")


class _State(NamedTuple):
  x: np.ndarray
  r: np.ndarray
  p: np.ndarray
  rz: np.ndarray
  iteration: int
  history: np.ndarray
  elapsed: float
  breakdown: np.ndarray


def checkpoint_path(checkpoint) -> str:
  """The checkpoint path as a string, its directory created (checked before any long work,
  so that a solve never runs for minutes and then fails to save)."""
  if not isinstance(checkpoint, (str, os.PathLike)):
    raise TypeError(f"`checkpoint` must be a file path (str), got {type(checkpoint).__name__}.")
  checkpoint = os.fspath(checkpoint)
  d = os.path.dirname(os.path.abspath(checkpoint))
  if os.path.isdir(checkpoint):
    raise ValueError(f"`checkpoint` {checkpoint!r} is a directory; pass a file path, e.g. "
                     f"{os.path.join(checkpoint, 'solve.npz')!r}.")
  try:
    os.makedirs(d, exist_ok=True)
  except OSError as e:
    raise ValueError(f"`checkpoint` {checkpoint!r}: its directory {d!r} cannot be created "
                     f"({e.strerror}); pass a path in a writable directory.") from None
  if not os.access(d, os.W_OK):
    raise ValueError(f"`checkpoint` {checkpoint!r}: its directory {d!r} is not writable; "
                     "pass a path in a writable directory.")
  return checkpoint


def save_arrays(path: str, arrays: dict, fingerprint: dict) -> None:
  """Writes named arrays and the problem's fingerprint atomically: a temporary file in the
  same directory, then a rename (a crash mid-write leaves the previous file intact)."""
  d = os.path.dirname(os.path.abspath(path)) or "."
  fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=d)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, version=np.int64(CHECKPOINT_VERSION),
               fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)), **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def load_arrays(path: str, fingerprint: dict, names) -> Optional[dict]:
  """The arrays ``names`` saved by :func:`save_arrays` at ``path`` (``None`` if there is no
  file); a file of another format version or another fingerprint is refused with
  ``ValueError`` naming the fields that differ."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      saved = json.loads(str(z["fingerprint"]))
      version = int(z["version"])
      out = {k: z[k] for k in names}
  except Exception as e:  # noqa: BLE001 - any unreadable file is refused by name
    raise ValueError(f"`checkpoint` {path!r} exists but is not a readable solver checkpoint "
                     f"({type(e).__name__}: {e}); delete it or pass another path.") from None
  if version != CHECKPOINT_VERSION:
    raise ValueError(f"`checkpoint` {path!r} has format version {version}, this solver "
                     f"writes {CHECKPOINT_VERSION}; delete it or pass another path.")
  fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
  if saved != fingerprint:
    keys = sorted(set(saved) | set(fingerprint))
    diff = [f"{k} (saved {saved.get(k)!r}, now {fingerprint.get(k)!r})" for k in keys
            if saved.get(k) != fingerprint.get(k)]
    raise ValueError(f"`checkpoint` {path!r} was written for a different problem: "
                     f"{'; '.join(diff)}. Resume only the same problem; delete the file or "
                     "pass another path to start afresh.")
  return out


_STATE_NAMES = ("x", "r", "p", "rz", "iteration", "history", "elapsed", "breakdown")


def _save(path: str, state: _State, fingerprint: dict) -> None:
  save_arrays(path, dict(x=state.x, r=state.r, p=state.p, rz=state.rz,
                         iteration=np.int64(state.iteration), history=state.history,
                         elapsed=np.float64(state.elapsed), breakdown=state.breakdown),
              fingerprint)


def _load(path: str, fingerprint: dict, shape) -> Optional[_State]:
  z = load_arrays(path, fingerprint, _STATE_NAMES)
  if z is None:
    return None
  state = _State(z["x"], z["r"], z["p"], z["rz"], int(z["iteration"]), z["history"],
                 float(z["elapsed"]), z["breakdown"])
  if state.x.shape != tuple(shape):
    raise ValueError(f"`checkpoint` {path!r} holds an iterate of shape {state.x.shape}, the "
                     f"problem has {tuple(shape)}; delete it or pass another path.")
  return state


def pcg(matmul: Callable, b, *, precond: Optional[Callable] = None, rtol: float = 1e-3,
        max_iter: int = 100, progress=False, checkpoint: Optional[str] = None,
        checkpoint_every: int = 5, fingerprint: Optional[dict] = None):
  r"""Preconditioned CG on ``A X = B`` for all columns of ``B`` at once (one product per
  iteration), with progress output and checkpoint/resume (module docstring).

  Args:
    matmul: ``V ↦ A V`` for ``V`` of shape ``(n, c)`` (float64 numpy in, array-like out);
      ``A`` symmetric positive definite.
    b: right-hand sides, ``(n,)`` or ``(n, c)``.
    precond: ``R ↦ M R`` with ``M`` symmetric positive definite, ``M ≈ A⁻¹``; ``None`` for
      plain CG.
    rtol: stop a column at ``‖r_j‖ <= rtol·‖b_j‖`` (a float in (0, 1)).
    max_iter: iterations at most (counting those before a resume), an int >= 0.
    progress: ``True`` prints one line per iteration on stderr (iteration, relative
      residual, elapsed s); a callable receives a :class:`SolveProgress` after each
      iteration (raising ``KeyboardInterrupt`` there stops the solve as Ctrl-C does).
    checkpoint: a file path, or ``None``: see the module docstring.
    checkpoint_every: iterations between checkpoint writes (int >= 1).
    fingerprint: a JSON-serialisable dict describing the problem (required with
      ``checkpoint``).

  Returns:
    ``(x, info)``: the solution with the shape of ``b`` (float64) and a :class:`SolveInfo`.

  Raises:
    ValueError: bad arguments; a ``checkpoint`` of another problem (fields named).
    KeyboardInterrupt: re-raised after the state of the last finished iteration is saved.

  Example:
    >>> A = np.diag([4.0, 2.0, 1.0])
    >>> x, info = pcg(lambda v: A @ v, np.ones((3, 2)), rtol=1e-12)
    >>> x[:, 0].round(12).tolist(), info.iterations, bool(info.converged)
    ([0.25, 0.5, 1.0], 3, True)
  """
  b = np.asarray(b)
  if b.ndim not in (1, 2) or b.shape[0] == 0:
    raise ValueError(f"`b` must have shape (n,) or (n, c) with n >= 1; got {b.shape}.")
  if not np.issubdtype(b.dtype, np.number) or not np.all(np.isfinite(b)):
    raise ValueError("`b` must be finite numbers (NaN/inf found or a non-numeric dtype).")
  B = np.asarray(b, np.float64).reshape(b.shape[0], -1)
  rtol = _v.check_real(rtol, "rtol", lo=0, lo_open=True, hi=1, hi_open=True)
  max_iter = _v.check_int(max_iter, "max_iter", lo=0)
  checkpoint_every = _v.check_int(checkpoint_every, "checkpoint_every", lo=1)
  report = check_progress(progress)
  if checkpoint is not None:
    checkpoint = checkpoint_path(checkpoint)
    if fingerprint is None:
      raise ValueError("`checkpoint` needs a `fingerprint` of the problem (what a resumed "
                       "run is checked against).")
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))   # canonical form
  bnorm = np.linalg.norm(B, axis=0)
  bsafe = np.where(bnorm > 0, bnorm, 1.0)

  def apply(v):
    out = np.asarray(matmul(v), np.float64)
    if out.shape != v.shape:
      raise ValueError(f"`matmul` must map an (n, c) = {v.shape} block to one of the same "
                       f"shape; it returned {out.shape}.")
    if not np.all(np.isfinite(out)):
      raise ValueError("the product A V is not finite (NaN/inf) for a finite V: check the "
                       "operator (kernel, its parameters and the inputs' scale).")
    return out

  def prec(r):
    return r if precond is None else np.asarray(precond(r), np.float64)

  state = _load(checkpoint, fingerprint, B.shape) if checkpoint is not None else None
  resumed_from = 0 if state is None else state.iteration
  if state is None:
    x = np.zeros_like(B)
    r = B.copy()
    z = prec(r)
    rz = np.sum(r * z, axis=0)
    rel = np.linalg.norm(r, axis=0) / bsafe
    state = _State(x, r, z.copy(), rz, 0, rel[None], 0.0, np.zeros(B.shape[1], bool))
  t0 = time.perf_counter() - state.elapsed
  last_saved = state.iteration if resumed_from else -1

  def save(st):
    nonlocal last_saved
    if checkpoint is not None and last_saved != st.iteration:
      _save(checkpoint, st, fingerprint)
      last_saved = st.iteration

  try:
    while True:
      x, r, p, rz, it, hist, _, brk = state
      rel = np.linalg.norm(r, axis=0) / bsafe
      active = (rel > rtol) & ~brk
      if not active.any() or it >= max_iter:
        break
      q = apply(p)
      pq = np.sum(p * q, axis=0)
      newly_broken = active & ~(pq > 0)
      active = active & ~newly_broken
      alpha = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
      x = x + alpha * p
      r = r - alpha * q
      z = prec(r)
      rz_new = np.sum(r * z, axis=0)
      beta = np.where(active, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
      p = np.where(active, z + beta * p, p)
      rz = np.where(active, rz_new, rz)
      rel = np.linalg.norm(r, axis=0) / bsafe
      state = _State(x, r, p, rz, it + 1, np.concatenate([hist, rel[None]]),
                     time.perf_counter() - t0, brk | newly_broken)
      if (it + 1) % checkpoint_every == 0:
        save(state)
      if report is not None:
        report(SolveProgress(it + 1, float(rel.max()), rel, state.elapsed,
                             int(np.sum(rel <= rtol)), x))
  except KeyboardInterrupt:
    save(state)
    raise
  save(state)
  rel = state.history[-1]
  info = SolveInfo(state.iteration, rel, bool(np.all(rel <= rtol)), state.elapsed,
                   state.history, resumed_from, state.breakdown, state.r.reshape(b.shape))
  return state.x.reshape(b.shape), info
