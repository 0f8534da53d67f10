"""fastcka: representation-similarity metrics (CKA, HSIC, Fourier progress measures) as PyTorch ops."""

from . import reference
from ._ops import ops
from .functional import cka, cka_from_terms, hsic, hsic_terms

__version__ = "0.1.0"

__all__ = ["cka", "hsic", "hsic_terms", "cka_from_terms", "ops", "reference", "__version__"]
