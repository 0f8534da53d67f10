"""fastcka: representation-similarity metrics (CKA, HSIC, Fourier progress measures) as PyTorch ops.

The submodules in ``_LAZY_SUBMODULES`` (``fastcka.streaming``, ``fastcka.plot``, ...) are attributes of the package
too, imported on first access, so that ``import fastcka`` stays quick and never imports matplotlib.
"""

import importlib
from typing import Any

from . import reference
from ._ops import ops
from .fourier import frequency_concentration, frequency_energy, frequency_spectrum, key_frequencies
from .functional import center_gram, cka, cka_from_terms, cka_matrix, hsic, hsic_terms
from .monitor import CKAMonitor
from .compare import CKAResult, compare  # the function shadows the submodule's name: import CKAResult from here

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

# Submodules reachable as attributes of the package without an explicit import, imported on first access.
_LAZY_SUBMODULES = ("streaming", "plot", "integrations", "grok")


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "CKAMonitor",
    "compare",
    "CKAResult",
    "cka",
    "cka_matrix",
    "center_gram",
    "hsic",
    "hsic_terms",
    "cka_from_terms",
    "frequency_spectrum",
    "frequency_energy",
    "key_frequencies",
    "frequency_concentration",
    "ops",
    "reference",
    "__version__",
]
