"""Experiment programs: one importable module per experiment, ``run(config, ctx)`` each.

A config file ``configs/NAME.py`` is declarative (``get_config(arg=None)`` returns every
value the program uses, the quick variant included) and names its program in
``config.program``; the runner (:mod:`mskjax.run`) calls
``mskjax.experiments.get(config.program).run(config, ctx)``. Programs are plain code,
tested through their public functions like the library; importing this package imports
no program (each is imported on demand: some pull in flax, scipy or matplotlib).

Example:
  >>> from mskjax import experiments
  >>> 'quickstart' in experiments.names()
  True
  >>> callable(experiments.get('quickstart').run)
  True
"""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["get", "names"]


def names() -> tuple[str, ...]:
  """The experiment programs in this package (module names, sorted)."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")))


def get(name: str):
  """The program module ``mskjax.experiments.<name>`` (it defines ``run(config, ctx)``).

  A dotted ``name`` (``'mypkg.my_experiment'``) is imported as it is: an experiment program
  outside this package (it must be importable, e.g. from the working directory).

  Raises:
    ValueError: ``name`` is not a program (the message lists the ones here).
  """
  if isinstance(name, str) and "." in name.strip("."):
    try:
      module = importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f"`program`: cannot import the experiment program {name!r} ({e}).") \
          from None
  elif not isinstance(name, str) or name not in names():
    raise ValueError(f"`program`: unknown experiment program {name!r}; a config's "
                     f"`program` must be one of {', '.join(names())} (the modules of "
                     "mskjax/experiments/) or a dotted module path.")
  else:
    module = importlib.import_module(f"{__name__}.{name}")
  if not callable(getattr(module, "run", None)):
    raise ValueError(f"`program`: {module.__name__} defines no `run(config, ctx)`.")
  return module
