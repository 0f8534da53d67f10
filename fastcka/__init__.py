"""fastcka: representation-similarity metrics (CKA, HSIC, Fourier progress measures) as PyTorch ops."""

from . import reference
from ._ops import ops
from .fourier import frequency_concentration, frequency_energy, frequency_spectrum, key_frequencies
from .functional import center_gram, cka, cka_from_terms, cka_matrix, hsic, hsic_terms
from .monitor import CKAMonitor

__version__ = "0.1.0"

__all__ = [
    "CKAMonitor",
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
