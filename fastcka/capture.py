"""Layer activations from forward hooks: names → hooks → (n, features) tensors.

:class:`Capture` is the one place fastcka turns a model's layer outputs into the matrices CKA is computed on. It is
shared by :class:`fastcka.CKAMonitor` (training-time logging) and :func:`fastcka.compare` (two models over a data
set)::

    with Capture(model, ["blocks.*"], reduce="mean") as cap:
        acts = cap.run(model, batch)            # {"blocks.0": (n, d), "blocks.1": (n, d), ...}

Layer names
-----------
Dotted module names as ``named_modules()`` gives them, or glob patterns: ``*`` matches within one dotted segment,
``**`` across segments, ``?`` one character, ``[...]`` a character class. A name or pattern that matches nothing is
a ValueError listing the closest module names.

Layer outputs
-------------
A layer's output is reduced to one tensor first: a tensor is used as it is; a tuple or list gives its first tensor
(searched depth first); a mapping (a Hugging Face ``ModelOutput``, a dict) its ``last_hidden_state`` if it has
one, else its first tensor value. Then, with examples along dim 0, ``reduce`` maps it to (n, ...):

* (n,) and (n, d): used as they are (a callable ``reduce`` still applies);
* (n, T, d) token outputs: ``"mean"`` / ``"max"`` over the T positions, ``"flatten"`` (T·d features), an ``int``
  token index (``-1``: the last token; ``0``: a [CLS] token), a LongTensor (n,) with one position per example
  (e.g. each sequence's last non-padding token), or a callable;
* (n, C, H, W) and higher (feature maps): ``"mean"`` / ``"max"`` pool over the spatial dims (global average / max
  pooling: C features); ``"flatten"``, an int or a position tensor keep every value (C·H·W features);
* a callable gets the raw output tensor and returns (n, ...), for layouts not covered above (sequence-first
  models, for instance).

The result is flattened to (n, features), detached and copied (``detach`` shares storage, so an in-place op after
the layer, such as ``ReLU(inplace=True)``, would otherwise rewrite the kept activation; a view would also keep the
layer's whole output alive).

A module called more than once in one forward
---------------------------------------------
The **first call** of each hooked module in a forward of the model is kept; later calls in the same forward are
ignored (a weight-shared block applied twice, say). This is the only choice that ``stop_early`` can honour (the
forward is cut short once every layer has fired, so a later call never runs), and it is the same with and without
``stop_early``. A new forward of the model (a forward pre-hook on the model itself) starts a new capture: when the
model is called several times, the last forward counts.
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

Tensor = torch.Tensor

__all__ = ["Capture", "resolve_layers", "feed", "StopForward"]

REDUCTIONS = ("mean", "max", "flatten")
Reduce = Union[None, str, int, Tensor, Callable[[Tensor], Tensor]]


# ---------------------------------------------------------------------------------------------------------------
# Layer names and glob patterns
# ---------------------------------------------------------------------------------------------------------------

def _glob_to_regex(pattern: str) -> "re.Pattern[str]":
    """Glob over dotted module names: ``*`` matches within one name segment (no dot), ``**`` across segments,
    ``?`` one character of a segment, ``[...]`` a character class."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def resolve_layers(model: nn.Module, layers: Union[str, Iterable[str]], arg: str = "layers") -> List[str]:
    """Module names of ``model`` matching ``layers`` (names or glob patterns), in the order the patterns are given
    and, within a pattern, in ``named_modules()`` order; duplicates dropped. A pattern matching nothing raises
    ValueError listing the closest module names (``arg`` names the argument in the message)."""
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"{arg} must name at least one module (names or glob patterns such as 'blocks.*')")
    names = [name for name, _ in model.named_modules() if name]
    out: List[str] = []
    for pat in layers:
        if not isinstance(pat, str):
            raise TypeError(f"{arg} must be module names or glob patterns (str), got {type(pat).__name__}")
        if _is_glob(pat):
            rx = _glob_to_regex(pat)
            hits = [nm for nm in names if rx.match(nm)]
        else:
            hits = [pat] if pat in names else []
        if not hits:
            close = difflib.get_close_matches(pat, names, n=6, cutoff=0.5)
            if close:
                hint = "close names: " + ", ".join(repr(c) for c in close)
            else:
                shown = names[:12]
                hint = "no close names; the model's modules include: " + ", ".join(repr(c) for c in shown)
                if len(names) > len(shown):
                    hint += f", ... ({len(names)} in all)"
            raise ValueError(f"{arg}: {pat!r} matches no module of {type(model).__name__}; {hint}")
        for h in hits:
            if h not in out:
                out.append(h)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Batches and devices
# ---------------------------------------------------------------------------------------------------------------

def describe(obj: Any, depth: int = 0) -> str:
    """Shapes and dtypes of a (nested) batch, for error messages (host metadata only, no sync)."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if depth > 2:
        return type(obj).__name__
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(obj.items())[:8]) + "}"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(describe(v, depth + 1) for v in obj[:8]) + ")"
    return type(obj).__name__


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``; mappings keep their type where it can be rebuilt."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        moved = {k: to_device(v, device) for k, v in obj.items()}
        try:
            return type(obj)(moved)
        except Exception:
            return moved
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def feed(model: Callable[..., Any], batch: Any) -> Any:
    """Call ``model`` on ``batch``: a tensor as ``model(batch)``, a mapping (dict, ``BatchEncoding``) as
    ``model(**batch)``, a tuple or list as ``model(*batch)``, anything else as ``model(batch)``."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def add_note(e: BaseException, note: str) -> None:
    """Attach ``note`` to an exception (``add_note`` on Python ≥ 3.11, appended to the message before)."""
    if hasattr(e, "add_note"):
        e.add_note(note)
    elif e.args and isinstance(e.args[0], str):  # Python 3.10
        e.args = (e.args[0] + "\n" + note,) + tuple(e.args[1:])


# ---------------------------------------------------------------------------------------------------------------
# Output → (n, features)
# ---------------------------------------------------------------------------------------------------------------

def first_tensor(out: Any, name: str) -> Tensor:
    """The tensor a layer output stands for (see the module doc); TypeError naming the layer when there is none."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        t = out.get("last_hidden_state", None) if hasattr(out, "get") else None
        if isinstance(t, torch.Tensor):
            return t
        values: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        values = out
    else:
        values = ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, (tuple, list, Mapping)):
            try:
                return first_tensor(v, name)
            except TypeError:
                pass
    raise TypeError(
        f"layer {name!r} returned {type(out).__name__}, which holds no tensor; hook a module whose output is a "
        "tensor, a tuple/list starting with one, or a ModelOutput"
    )


def check_reduce(reduce: Reduce, arg: str = "reduce") -> Reduce:
    """Validate a ``reduce`` option (see the module doc); returns it unchanged."""
    if reduce is None or callable(reduce) and not isinstance(reduce, Tensor):
        return reduce
    if isinstance(reduce, str):
        if reduce not in REDUCTIONS:
            raise ValueError(f"{arg} must be one of {', '.join(map(repr, REDUCTIONS))}, a token index (int), a "
                             f"LongTensor of positions, or a callable; got {reduce!r}")
        return reduce
    if isinstance(reduce, bool):
        raise TypeError(f"{arg} must be a str, an int token index, a position tensor or a callable, got bool")
    if isinstance(reduce, int):
        return reduce
    if isinstance(reduce, Tensor):
        if reduce.dim() != 1 or reduce.is_floating_point() or reduce.is_complex():
            raise ValueError(f"{arg}: a position tensor must be 1-D with integer dtype (one position per example), "
                             f"got {describe(reduce)}")
        return reduce
    raise TypeError(f"{arg} must be None, one of {', '.join(map(repr, REDUCTIONS))}, an int token index, a "
                    f"LongTensor of positions or a callable; got {type(reduce).__name__}")


def reduce_output(t: Tensor, reduce: Reduce, position: Optional[Tensor] = None) -> "tuple[Tensor, bool]":
    """(f, fresh): ``t`` reduced to (n, ...) by ``reduce`` (module doc), ``fresh`` when f is a new tensor rather than
    ``t`` or a view of it. ``position`` is ``reduce`` already on t's device when ``reduce`` is a tensor."""
    if callable(reduce) and not isinstance(reduce, Tensor):
        return reduce(t), False
    if t.dim() <= 2 or reduce is None:
        return t, False
    if reduce == "mean":
        return t.mean(tuple(range(2, t.dim())) if t.dim() > 3 else 1), True
    if reduce == "max":
        return t.amax(tuple(range(2, t.dim())) if t.dim() > 3 else 1), True
    if t.dim() == 3 and isinstance(reduce, Tensor):
        pos = reduce if position is None else position
        return t[torch.arange(t.shape[0], device=t.device), pos], True
    if t.dim() == 3 and isinstance(reduce, int):
        return t[:, reduce], False
    return t, False  # "flatten", or a token index on a feature map: every value is a feature


class StopForward(Exception):
    """Raised from the last hook of a capture with ``stop_early`` to skip the rest of the forward."""


def _remove_handles(handles: List[Any]) -> None:
    for h in handles:
        h.remove()  # idempotent


class Capture:
    """Forward hooks on ``layers`` of ``model`` that keep each layer's output as an (n, features) tensor.

    Args:
        model: the module to hook (names are relative to it).
        layers: module names or glob patterns (see the module doc), resolved in the given order into ``layers``.
        reduce: how a (n, T, d) or (n, C, H, W) output becomes (n, features): ``"mean"`` (default), ``"max"``,
            ``"flatten"``, an int token index, a LongTensor (n,) of positions, a callable, or None (used as they
            are, flattened).
        rows: keep only these rows (a 1-D LongTensor of example indices) of every output.
        stop_early: raise :class:`StopForward` once every layer has fired in a forward (``run`` catches it), so
            the layers after the last hooked one do not run.
        when: optional predicate ``when(module) -> bool`` called in each hook: the output is kept only when it
            returns True (the monitor uses it to capture training forwards only).
        arg: the argument's name in error messages (``"layers"``, ``"layers_a"`` ...).

    ``activations`` maps layer names to what the current forward captured (the first call of each module, see the
    module doc). Use it as a context manager, or call :meth:`remove`: the hooks go on exit, also on an exception.
    A Capture dropped without :meth:`remove` takes its hooks with it (the hooks hold it weakly).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Union[str, Sequence[str]],
        *,
        reduce: Reduce = "mean",
        rows: Optional[Tensor] = None,
        stop_early: bool = False,
        when: Optional[Callable[[nn.Module], bool]] = None,
        arg: str = "layers",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers: List[str] = resolve_layers(model, layers, arg)
        self.reduce: Reduce = check_reduce(reduce)
        self.rows = rows
        self.stop_early = bool(stop_early)
        self.when = when
        self.activations: Dict[str, Tensor] = {}
        self._device_cache: Dict[str, Any] = {}
        modules = dict(model.named_modules())
        ref = weakref.ref(self)
        self._handles = [modules[nm].register_forward_hook(self._make_hook(ref, nm)) for nm in self.layers]
        self._handles.append(model.register_forward_pre_hook(self._make_pre_hook(ref)))
        weakref.finalize(self, _remove_handles, list(self._handles))

    # -- hooks ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _make_pre_hook(ref: "weakref.ref[Capture]"):
        def pre_hook(module: nn.Module, inputs: Any) -> None:
            cap = ref()
            if cap is not None and (cap.when is None or cap.when(module)):
                cap.activations = {}  # a new forward of the model: a new capture

        return pre_hook

    @staticmethod
    def _make_hook(ref: "weakref.ref[Capture]", name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            cap = ref()
            if cap is None or name in cap.activations:  # first call of the module in this forward only
                return
            if cap.when is not None and not cap.when(module):
                return
            cap.activations[name] = cap.features(output, name)
            if cap.stop_early and len(cap.activations) == len(cap.layers):
                raise StopForward()

        return hook

    def _on_device(self, key: str, t: Tensor, device: torch.device) -> Tensor:
        hit = self._device_cache.get(key)
        if hit is not None and hit[0] is t and hit[1].device == device:
            return hit[1]
        moved = t.to(device)
        self._device_cache[key] = (t, moved)
        return moved

    def features(self, output: Any, name: str) -> Tensor:
        """One layer output → a detached (n, features) copy (see the module doc)."""
        t = first_tensor(output, name).detach()
        r = self.reduce
        pos = self._on_device("position", r, t.device) if isinstance(r, Tensor) else None
        f, fresh = reduce_output(t, r, pos)
        if f.dim() == 0:
            raise ValueError(f"layer {name!r}: the reduced output is a 0-d tensor; it needs examples along dim 0")
        if self.rows is not None:
            f = f.index_select(0, self._on_device("rows", self.rows, f.device))
        elif not fresh:
            f = f.clone()
        return f.reshape(f.shape[0], -1)

    # -- running -------------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget what was captured."""
        self.activations = {}

    def missing(self) -> List[str]:
        """The layers with nothing captured."""
        return [nm for nm in self.layers if nm not in self.activations]

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Dict[str, Tensor]:
        """Clear, call ``fn(*args, **kwargs)`` (for a module and one batch: ``run(model, batch)`` feeds it as
        :func:`feed` does), stop quietly at :class:`StopForward`, and return the captured activations in
        ``layers`` order (layers that did not fire are absent: see :meth:`missing`)."""
        self.clear()
        try:
            if isinstance(fn, nn.Module) and len(args) == 1 and not kwargs:
                feed(fn, args[0])
            else:
                fn(*args, **kwargs)
        except StopForward:
            pass
        acts = self.activations
        return {nm: acts[nm] for nm in self.layers if nm in acts}

    # -- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the hooks are removed."""
        return not self._handles

    def remove(self) -> None:
        """Remove the hooks (idempotent) and forget what was captured."""
        _remove_handles(self._handles)
        self._handles = []
        self.activations = {}

    close = remove

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        r = self.reduce if not isinstance(self.reduce, Tensor) else f"positions{tuple(self.reduce.shape)}"
        return f"Capture({type(self.model).__name__}, layers={self.layers}, reduce={r!r}, closed={self.closed})"
