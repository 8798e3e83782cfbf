"""Optional backends, imported only by the features that need them.

The core (``train``, ``eval``, ``study`` in one process, synthetic data, the PIL shard reader)
needs only PyTorch, numpy, scikit-learn, scipy, PyYAML, Pillow, matplotlib, h5py, Accelerate and
tqdm. Ray, DALI, MLflow and WebDataset are extras of the package (``pip install
'gvae-dist[ray]'`` etc., ``[all]`` for every one; ``[dev]`` includes ``[all]``):

- :func:`require` imports one for a named feature, or raises :class:`MissingDependency` whose
  message is one line naming the feature and the extra to install (the CLI prints just that line);
- :func:`available` says whether one could be imported, without importing it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["MissingDependency", "require", "available", "EXTRAS"]

# top-level module -> (distribution to install, extra of gvae-dist that pulls it in)
EXTRAS = {
    "ray": ("ray[default,train,tune]", "ray"),
    "nvidia.dali": ("nvidia-dali-cuda120", "dali"),
    "mlflow": ("mlflow", "mlflow"),
    "webdataset": ("webdataset", "webdataset"),
    "optuna": ("optuna", "dev"),
}


class MissingDependency(ImportError):
    """An optional backend a feature needs is not installed; the message is one line."""


def _root(module: str) -> str:
    for name in EXTRAS:
        if module == name or module.startswith(name + "."):
            return name
    return module.split(".")[0]


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path and not blocked), without importing
    it. A module set to None in ``sys.modules`` (how tests hide a package) counts as missing."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in sys.modules:
            if sys.modules[name] is None:
                return False
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``; :class:`MissingDependency` (one line: the feature, the
    package and ``pip install 'gvae-dist[extra]'``) if it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, default_extra = EXTRAS.get(_root(module), (module.split(".")[0], None))
        extra = extra or default_extra
        how = f"pip install 'gvae-dist[{extra}]'" if extra else f"pip install {dist}"
        raise MissingDependency(
            f"{feature} needs {dist}, which is not installed here ({type(exc).__name__}: {exc}); install it with: {how}"
        ) from exc
