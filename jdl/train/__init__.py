"""Training: the loop (:mod:`jdl.train.loop`), its steps, state, callbacks,
checkpoint resume and parallelism.

Its modules load when first named (``jdl.train.callbacks`` after ``import jdl``), as
:mod:`jdl`'s own do.
"""

import importlib

_SUBMODULES = frozenset({
    "callbacks", "checks", "diagnose", "loop", "outputs", "parallel", "plots", "profile",
    "reopen", "resume", "run_data", "runtime", "state", "steps", "strategy", "transfer",
    "workdir",
})


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"jdl.train.{name}")
  raise AttributeError(f"module 'jdl.train' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *_SUBMODULES})
