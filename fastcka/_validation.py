"""Argument checks shared by every public entry point: one definition of what a representation, a flag or a renamed
option may be, so that `fastcka.cka`, the streaming accumulators and the integrations accept and refuse the same
inputs with the same messages."""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, Dict, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["as_matrix", "check_flag", "renamed_options", "warn_renamed"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def as_matrix(t: Any, name: str) -> Tensor:
    """(n, ...) -> (n, features) view (a 1-D input is one feature per example; every dim after the first is
    flattened). TypeError for a non-tensor or a tensor that is not real floating point (integer, bool, complex);
    ValueError for a 0-d tensor or one with no features (width 0). n = 0 rows is allowed here (callers decide)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"{name} must have shape (n, ...) with one example per row, got a 0-d tensor")
    if t.dim() == 1:
        t = t[:, None]
    t = t.reshape(t.shape[0], math.prod(t.shape[1:]))  # (not -1: ambiguous for n = 0)
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features: shape {tuple(t.shape)}")
    return t


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool; TypeError unless it is True or False (a string such as "no" is truthy, so it is
    refused rather than read as True). numpy's bool is accepted."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _stacklevel_outside_package() -> int:
    """The warnings stacklevel of the first frame outside the fastcka package (the user's call)."""
    frame, level = sys._getframe(1), 1  # the caller of this helper issues the warning: its frame is stacklevel 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def warn_renamed(old: str, new: str) -> None:
    """DeprecationWarning "<old> is deprecated ...; use <new>", attributed to the user's line (the first frame
    outside fastcka)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}", DeprecationWarning,
                  stacklevel=_stacklevel_outside_package())


def renamed_options(where: str, legacy: Dict[str, Any], **options: Tuple[str, Any, Any]) -> Any:
    """Resolve options that were renamed, accepting the old keyword for one release with a DeprecationWarning.

    ``legacy`` is the ``**kwargs`` dict the public callable received; each keyword option is given as
    ``new_name=(old_name, value, default)``, ``value`` being what the callable got for ``new_name``. Returns the
    resolved values in the order given (one value alone when a single option is given). TypeError when both the
    old and the new name are passed, or for a keyword that is neither (as Python would raise).
    """
    resolved = []
    for new, (old, value, default) in options.items():
        if old in legacy:
            old_value = legacy.pop(old)
            if value is not default:
                raise TypeError(f"{where}() got both {new}= and its deprecated name {old}=; pass {new}= only")
            warn_renamed(f"{where}(): {old}=", f"{new}=")
            value = old_value
        resolved.append(value)
    if legacy:
        raise TypeError(f"{where}() got an unexpected keyword argument {next(iter(legacy))!r}")
    return resolved[0] if len(resolved) == 1 else tuple(resolved)
