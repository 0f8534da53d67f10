"""Compare two models layer by layer over a whole data set: :func:`compare` → :class:`CKAResult`.

::

    res = fastcka.compare(model_a, model_b, loader, layers_a="encoder.layer.*", layers_b="encoder.layer.*")
    res.matrix          # (L_a, L_b) float64: CKA of layer i of model_a with layer j of model_b, over the whole set
    res.plot("cka.png"); res.save("cka.json")

Both models see the same batch, in eval mode (restored afterwards) under ``torch.inference_mode()``. Layer outputs
become (n, features) matrices through :class:`fastcka.capture.Capture` (``reduce``: token outputs and feature maps
are averaged over positions by default).

Estimators
----------
* ``"exact"`` (linear kernel): the CKA of the whole data set, as if every example's activations had been stacked
  into one matrix — the value :func:`fastcka.cka` gives on the concatenated activations, independent of the batch
  size up to float64 rounding. Per batch, each layer's rows Z = [1, X − c, ‖X − c‖²] (c: the layer's first example;
  the norm column only with ``unbiased=True``) are accumulated in float64 as each layer's own moment ZᵀZ and the
  a×b cross blocks Z_aᵀZ_b — not the full moment matrix of every layer against every layer of the same model,
  which nobody asked for. That is 8·(Σ_a D_a² + Σ_b D_b² + Σ_a D_a · Σ_b D_b) bytes with D = width + 1 (+1 when
  unbiased): for two 12-layer models of width 768, about 0.8 GB (the full matrix would be 2.7 GB). The CKA of
  each pair comes from its blocks with :mod:`fastcka.streaming`'s formulas (Kornblith et al.'s feature-space
  HSIC₁ when unbiased). The first batch's widths are checked against the memory before anything is accumulated.
* ``"minibatch"`` (linear or RBF): Nguyen et al. (2021)'s minibatch CKA,
  Σ_b HSIC₁(K_b, L_b) / √(Σ_b HSIC₁(K_b, K_b) · Σ_b HSIC₁(L_b, L_b)), the unbiased HSIC of each batch (≥ 4 rows)
  summed over batches, in float64. A different estimator: it depends on the batch size.

Distributed
-----------
Under ``torch.distributed``, every rank calls :func:`compare` with its own shard of the data (shards may differ in
size; a rank may have none). The ranks agree on the layers, widths and the shift c once, after their first batch
(one ``all_gather_object``); the sums are added with ``all_reduce`` at the end. The result is the same on every
rank and equals the single-process result on the whole data (to float64 rounding). An error raised on one rank
after the first batch (a layer that stops firing, say) leaves the other ranks waiting in the final all_reduce, as
any rank-local exception does under torch.distributed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .capture import Capture, Reduce, add_note, describe, feed, model_device, resolve_layers, to_device

Tensor = torch.Tensor

__all__ = ["compare", "CKAResult"]

_F64 = torch.float64
_ESTIMATORS = ("exact", "minibatch")
_RESULT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CKAResult:
    """What :func:`compare` returns: the (L_a × L_b) CKA matrix and how it was measured.

    Attributes:
        matrix: float64 CPU tensor; ``matrix[i, j]`` is the CKA of ``layers_a[i]`` with ``layers_b[j]``.
        layers_a, layers_b: the resolved layer names (rows, columns).
        n: examples compared (summed over ranks); batches: batches used (over ranks).
        estimator, kernel, unbiased, reduce, sigma: the settings (``reduce`` as text).
        model_a, model_b: the models' class names (for titles).
    """

    matrix: Tensor
    layers_a: List[str]
    layers_b: List[str]
    n: int
    batches: int
    estimator: str
    kernel: str = "linear"
    unbiased: bool = False
    reduce: str = "mean"
    sigma: Optional[Any] = None
    model_a: str = "model_a"
    model_b: str = "model_b"
    extra: Dict[str, Any] = field(default_factory=dict)

    # -- reading -----------------------------------------------------------------------------------------------
    def __getitem__(self, key: Tuple[Union[int, str], Union[int, str]]) -> float:
        """``res["blocks.0", "blocks.3"]`` or ``res[0, 3]``: one entry as a float."""
        i, j = key
        i = self.layers_a.index(i) if isinstance(i, str) else i
        j = self.layers_b.index(j) if isinstance(j, str) else j
        return float(self.matrix[i, j])

    @property
    def what(self) -> str:
        """One line saying what was compared and how."""
        form = "unbiased" if self.unbiased else "biased"
        est = "exact" if self.estimator == "exact" else "minibatch"
        return (f"{self.model_a} vs {self.model_b}: {est} {self.kernel} CKA ({form}), n={self.n:,} in "
                f"{self.batches} batch{'es' if self.batches != 1 else ''}")

    def plot(self, path: Optional[Union[str, "os.PathLike[str]"]] = None, *, title: Optional[str] = None,
             annotate: Optional[bool] = None, ax: Any = None):
        """The heatmap (:func:`fastcka.plot.cka_heatmap`): layers of model_a down, of model_b across, a colour bar
        fixed to [0, 1] and a title saying what was compared. Saved to ``path`` if given; returns the figure."""
        from .plot import cka_heatmap

        title = self.what.replace(": ", "\n", 1) if title is None else title
        fig = cka_heatmap(self.matrix, labels=self.layers_a, col_labels=self.layers_b, title=title, annotate=annotate,
                          ax=ax, row_title=self.model_a, col_title=self.model_b)
        width_in = fig.get_size_inches()[0]
        longest = max(len(line) for line in title.splitlines()) if title else 1
        # a character is about 0.55 em wide: the largest size (≤ 12 pt) at which the title, centred on the axes,
        # stays inside the figure
        fig.axes[0].title.set_fontsize(max(6.0, min(12.0, 0.62 * 72 * width_in / (0.55 * longest))))
        if ax is None:
            fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=120)
        return fig

    # -- saving --------------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data (the matrix as nested lists of floats; NaN kept as NaN)."""
        return {
            "version": _RESULT_VERSION,
            "kind": "fastcka.CKAResult",
            "matrix": self.matrix.tolist(),
            "layers_a": list(self.layers_a),
            "layers_b": list(self.layers_b),
            "n": int(self.n),
            "batches": int(self.batches),
            "estimator": self.estimator,
            "kernel": self.kernel,
            "unbiased": bool(self.unbiased),
            "reduce": self.reduce,
            "sigma": self.sigma,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CKAResult":
        """Inverse of :meth:`to_dict` (ValueError for anything else)."""
        if not isinstance(d, Mapping) or d.get("kind") != "fastcka.CKAResult":
            raise ValueError("not a saved fastcka.CKAResult (no kind 'fastcka.CKAResult')")
        if d.get("version") != _RESULT_VERSION:
            raise ValueError(f"saved CKAResult has version {d.get('version')!r}; this fastcka reads {_RESULT_VERSION}")
        try:
            m = torch.as_tensor(d["matrix"], dtype=_F64)
            res = cls(matrix=m, layers_a=[str(s) for s in d["layers_a"]], layers_b=[str(s) for s in d["layers_b"]],
                      n=int(d["n"]), batches=int(d["batches"]), estimator=str(d["estimator"]),
                      kernel=str(d["kernel"]), unbiased=bool(d["unbiased"]), reduce=str(d["reduce"]),
                      sigma=d.get("sigma"), model_a=str(d["model_a"]), model_b=str(d["model_b"]),
                      extra=dict(d.get("extra") or {}))
        except KeyError as e:
            raise ValueError(f"saved CKAResult lacks the field {e.args[0]!r}") from None
        if m.shape != (len(res.layers_a), len(res.layers_b)):
            raise ValueError(f"saved CKAResult: matrix of shape {tuple(m.shape)} for {len(res.layers_a)} × "
                             f"{len(res.layers_b)} layers")
        return res

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write to ``path``: JSON for a ``.json`` name, else a torch file (``torch.save`` of :meth:`to_dict` with
        the matrix as a tensor), which :meth:`load` reads with ``weights_only=True``."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
        else:
            d = self.to_dict()
            d["matrix"] = self.matrix.clone()
            torch.save(d, path)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "CKAResult":
        """Read a file written by :meth:`save` (JSON, or a torch file loaded with ``weights_only=True``, so a
        crafted pickle is refused, never run)."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path) as f:
                return cls.from_dict(json.load(f))
        d = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(d, Mapping) and isinstance(d.get("matrix"), Tensor):
            d = dict(d, matrix=d["matrix"].tolist())
        return cls.from_dict(d)

    def __repr__(self) -> str:
        rows, cols = self.layers_a, self.layers_b
        show_r, show_c = min(len(rows), 8), min(len(cols), 6)
        w = max(len(c) for c in cols[:show_c])
        w = max(8, min(w, 18))
        head = " " * (min(max(len(r) for r in rows[:show_r]), 24) + 2)
        lines = [f"CKAResult({self.what}; {len(rows)} × {len(cols)} layers, reduce={self.reduce})"]
        lines.append(head + " ".join(c[-w:].rjust(w) for c in cols[:show_c]) + (" ..." if show_c < len(cols) else ""))
        for i in range(show_r):
            vals = " ".join(f"{float(self.matrix[i, j]):.4f}".rjust(w) for j in range(show_c))
            lines.append(rows[i][-24:].ljust(len(head)) + vals + (" ..." if show_c < len(cols) else ""))
        if show_r < len(rows):
            lines.append(f"... ({len(rows) - show_r} more rows)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The states
# ----------------------------------------------------------------------------------------------------------------


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} TiB"  # pragma: no cover


def _free_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device`` (CUDA: the allocator's free bytes; CPU: the OS's available memory), or None."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # pragma: no cover - depends on the device
            return None
    try:  # Linux: MemAvailable counts the page cache the kernel can drop (MemFree does not)
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - neither Linux nor POSIX sysconf
        return None


class _CrossMoments:
    """Exact linear-CKA states of the a×b layer pairs: each layer's own moment and the cross blocks (module doc).

    The per-pair CKA is read off with :mod:`fastcka.streaming`'s moment formulas: the blocks of a pair are laid
    out as the two-layer moment matrix a :class:`fastcka.streaming.LinearCKA` would hold, [1, X_a, X_b, a_a, a_b],
    so this class adds the cross-block bookkeeping and no CKA formula of its own.
    """

    def __init__(self, widths_a: Sequence[int], widths_b: Sequence[int], shifts_a: Sequence[Tensor],
                 shifts_b: Sequence[Tensor], unbiased: bool, same: bool, device: torch.device) -> None:
        self.unbiased, self.same, self.n = bool(unbiased), bool(same), 0
        u = 1 if unbiased else 0
        self.widths_a, self.widths_b = tuple(widths_a), tuple(widths_b)
        self.dims_a = [1 + p + u for p in widths_a]
        self.dims_b = [1 + q + u for q in widths_b]
        self.off_a = [sum(self.dims_a[:i]) for i in range(len(self.dims_a))]
        self.off_b = [sum(self.dims_b[:j]) for j in range(len(self.dims_b))]
        self.shifts_a = [s.to(device, _F64) for s in shifts_a]
        self.shifts_b = [s.to(device, _F64) for s in shifts_b]
        self.cross = torch.zeros(sum(self.dims_a), sum(self.dims_b), dtype=_F64, device=device)
        self.self_a = [] if same else [torch.zeros(d, d, dtype=_F64, device=device) for d in self.dims_a]
        self.self_b = [] if same else [torch.zeros(d, d, dtype=_F64, device=device) for d in self.dims_b]

    @staticmethod
    def nbytes(widths_a: Sequence[int], widths_b: Sequence[int], unbiased: bool, same: bool) -> int:
        """Bytes of the float64 states for these widths."""
        u = 1 if unbiased else 0
        da, db = [1 + p + u for p in widths_a], [1 + q + u for q in widths_b]
        own = 0 if same else sum(d * d for d in da) + sum(d * d for d in db)
        return 8 * (sum(da) * sum(db) + own)

    def _rows(self, acts: Sequence[Tensor], shifts: Sequence[Tensor], dims: Sequence[int]) -> Tensor:
        """(b × Σ D) float64: per layer [1, X − c, ‖X − c‖²] (streaming's per-layer layout)."""
        b = acts[0].shape[0]
        z = torch.empty(b, sum(dims), dtype=_F64, device=self.cross.device)
        off = 0
        for x, c, d in zip(acts, shifts, dims):
            p = x.shape[1]
            z[:, off] = 1.0
            xs = z[:, off + 1 : off + 1 + p]
            xs.copy_(x)
            xs.sub_(c)
            if self.unbiased:
                torch.sum(xs * xs, dim=1, out=z[:, off + 1 + p])
            off += d
        return z

    def update(self, acts_a: Sequence[Tensor], acts_b: Sequence[Tensor]) -> None:
        za = self._rows(acts_a, self.shifts_a, self.dims_a)
        zb = za if self.same else self._rows(acts_b, self.shifts_b, self.dims_b)
        self.cross.addmm_(za.T, zb)
        sides = ((za, self.off_a, self.dims_a, self.self_a), (zb, self.off_b, self.dims_b, self.self_b))
        for z, offs, dims, own in sides:
            for o, d, m in zip(offs, dims, own):
                zi = z[:, o : o + d]
                m.addmm_(zi.T, zi)
        self.n += za.shape[0]

    def tensors(self) -> List[Tensor]:
        """Every additive state (for all_reduce)."""
        return [self.cross, *self.self_a, *self.self_b]

    def _own(self, side: str, i: int) -> Tensor:
        if self.same:
            o, d = self.off_a[i], self.dims_a[i]
            return self.cross[o : o + d, o : o + d]
        return (self.self_a if side == "a" else self.self_b)[i]

    def compute(self) -> Tensor:
        """(L_a × L_b) float64 CKA; 1 on the diagonal when comparing a model's layers with themselves."""
        from .streaming import _block_indicator, _cka_from_hsic_matrix, _linear_hsic_from_moments

        need = 4 if self.unbiased else 2
        if self.n < need:
            form = "unbiased" if self.unbiased else "biased"
            raise ValueError(f"the {form} exact CKA needs at least {need} examples in all, got {self.n}")
        u = 1 if self.unbiased else 0
        dev = self.cross.device
        out = torch.empty(len(self.dims_a), len(self.dims_b), dtype=_F64, device=dev)
        layout: Dict[Tuple[int, int], Tuple[Tensor, Tensor, Tensor]] = {}  # per (p, q): index maps and blocks
        for i, p in enumerate(self.widths_a):
            own_a = self._own("a", i)
            for j, q in enumerate(self.widths_b):
                if (p, q) not in layout:
                    t = torch.arange  # positions in the two-layer layout [1, X_a (p), X_b (q), a_a, a_b]
                    ia = torch.cat([t(0, 1 + p), t(1 + p + q, 2 + p + q)[:u]]).to(dev)
                    ib = torch.cat([t(0, 1), t(1 + p, 1 + p + q), t(2 + p + q, 3 + p + q)[:u]]).to(dev)
                    layout[p, q] = (ia, ib, _block_indicator((p, q), _F64, dev))
                ia, ib, blocks = layout[p, q]
                m = torch.empty(1 + p + q + 2 * u, 1 + p + q + 2 * u, dtype=_F64, device=dev)
                oa, ob = self.off_a[i], self.off_b[j]
                c = self.cross[oa : oa + self.dims_a[i], ob : ob + self.dims_b[j]]
                m[ia[:, None], ia] = own_a  # the four blocks cover every entry
                m[ib[:, None], ib] = self._own("b", j)
                m[ia[:, None], ib] = c
                m[ib[:, None], ia] = c.T
                h = _linear_hsic_from_moments(self.n, m, blocks, self.unbiased)
                out[i, j] = _cka_from_hsic_matrix(h)[0, 1]
        if self.same:  # a layer against itself: exactly 1, not 1 ± rounding (0 for a constant layer; NaN stays NaN)
            d = out.diagonal()
            d.copy_(torch.where(d > 0.5, torch.ones_like(d), d))
        return out


class _MinibatchSums:
    """Nguyen et al.'s minibatch CKA states: Σ_b HSIC₁ of every a×b pair and of every layer with itself."""

    def __init__(self, la: int, lb: int, kernel: str, sigma_a: Optional[float], sigma_b: Optional[float],
                 same: bool, device: torch.device) -> None:
        self.kernel, self.sigma_a, self.sigma_b, self.same = kernel, sigma_a, sigma_b, same
        self.cross = torch.zeros(la, lb, dtype=_F64, device=device)
        self.self_a = torch.zeros(la, dtype=_F64, device=device)
        self.self_b = torch.zeros(lb, dtype=_F64, device=device)
        self.n = 0

    def update(self, acts_a: Sequence[Tensor], acts_b: Sequence[Tensor]) -> None:
        dev = self.cross.device
        a = [x.to(dev, _F64) for x in acts_a]
        b = a if self.same else [y.to(dev, _F64) for y in acts_b]
        if self.kernel == "linear":
            # the extension's HSIC-matrix op (as in fastcka.cka_matrix): each layer centred once, one product per pair
            from ._ops import ops

            cross = ops.linear_hsic_matrix(a, [] if self.same else b, True, 0)  # method 0: "auto"
            self_a = cross.diagonal() if self.same else torch.stack(
                [ops.linear_hsic_matrix([x], [], True, 0)[0, 0] for x in a])
            self_b = self_a if self.same else torch.stack([ops.linear_hsic_matrix([y], [], True, 0)[0, 0] for y in b])
        else:
            from .streaming import _hsic1_terms  # minibatch kernel HSIC₁, one pair at a time

            terms = torch.stack([torch.stack([_hsic1_terms(x, y, self.kernel, self.sigma_a, self.sigma_b) for y in b])
                                 for x in a])  # (La, Lb, 3)
            cross, self_a, self_b = terms[:, :, 0], terms[:, 0, 1], terms[0, :, 2]
        self.cross += cross
        self.self_a += self_a
        self.self_b += self_b
        self.n += a[0].shape[0]

    def tensors(self) -> List[Tensor]:
        return [self.cross, self.self_a, self.self_b]

    def compute(self) -> Tensor:
        from .functional import cka_from_terms

        h = torch.stack(torch.broadcast_tensors(self.cross, self.self_a[:, None], self.self_b[None, :]), -1)
        return cka_from_terms(h)


# ----------------------------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------------------------


def _default_input(batch: Any) -> Any:
    """A tensor or a mapping is the input; of a tuple or list (``(inputs, labels)``) the first element is."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty tuple/list as a batch")
        return batch[0]
    return batch


def _check_int(value: Any, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _check_sigma(sigma: Any) -> Tuple[Optional[float], Optional[float]]:
    pair = tuple(sigma) if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    if len(pair) != 2:
        raise ValueError(f"sigma must be None, one float, or a pair (sigma_a, sigma_b); got {len(pair)} values")
    for s in pair:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf):
            raise ValueError(f"sigma must be positive and finite (or None: the median heuristic), got {s!r}")
    return pair  # type: ignore[return-value]


def _reduce_text(reduce: Reduce) -> str:
    if isinstance(reduce, Tensor):
        return f"positions{tuple(reduce.shape)}"
    if callable(reduce):
        return getattr(reduce, "__name__", "callable")
    return str(reduce)


class _Progress:
    """A tqdm bar (batches, examples seen) when asked for and tqdm is installed; otherwise nothing."""

    def __init__(self, enabled: bool, total: Optional[int]) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # optional: no bar without tqdm (pip install tqdm)
                return
            self.bar = tqdm(total=total, unit="batch", desc="fastcka.compare", leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(examples=f"{n:,}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compare(
    model_a: nn.Module,
    model_b: Optional[nn.Module],
    data: Iterable[Any],
    *,
    layers_a: Union[str, Sequence[str]],
    layers_b: Union[None, str, Sequence[str]] = None,
    estimator: str = "exact",
    kernel: str = "linear",
    unbiased: bool = False,
    sigma: Any = None,
    reduce: Reduce = "mean",
    input_fn: Optional[Callable[[Any], Any]] = None,
    device: Union[None, str, torch.device] = None,
    max_batches: Optional[int] = None,
    progress: bool = True,
    max_memory: Optional[int] = None,
    group: Any = None,
) -> CKAResult:
    """CKA between every hooked layer of ``model_a`` and every hooked layer of ``model_b`` over ``data``.

    Args:
        model_a, model_b: the models; ``model_b=None`` (or ``model_a`` itself) compares ``model_a`` with itself
            (one forward per batch).
        data: a DataLoader or any iterable of batches. A batch is a tensor, a tuple/list (its first element is the
            input: ``(inputs, labels)``) or a mapping (passed as ``model(**batch)``, as Hugging Face models take
            it); ``input_fn(batch)`` picks the input otherwise (a tuple it returns is passed as ``model(*input)``).
            Each batch goes to each model's device.
        layers_a, layers_b: module names or glob patterns (``"encoder.layer.*"``), resolved in the given order;
            ``layers_b=None`` takes the same names for model_b.
        estimator: ``"exact"`` (linear kernel, the whole data set; see the module doc) or ``"minibatch"``
            (Nguyen et al. 2021; linear or RBF).
        kernel: ``"linear"`` or ``"rbf"`` (minibatch only).
        unbiased: the debiased CKA (Song et al.'s HSIC₁) for the exact estimator. The minibatch estimator is
            unbiased per batch by definition (HSIC₁), whatever this says; its result reports ``unbiased=True``.
        sigma: RBF bandwidth: None (each batch's median heuristic), a float, or (σ_a, σ_b).
        reduce: how token outputs and feature maps become (n, features): ``"mean"`` (default), ``"max"``,
            ``"flatten"``, an int token index, a LongTensor of positions, or a callable (see
            :mod:`fastcka.capture`). A module called more than once per forward is measured at its first call.
        device: where the statistics are accumulated (default: model_a's device). The models run where they are.
        max_batches: stop after this many batches (per rank).
        progress: a tqdm progress bar (batches and examples seen) on rank 0 when tqdm is installed.
        max_memory: bytes the exact estimator's states may take (default: half the free memory of ``device``).
        group: the torch.distributed process group (default: the world) when distributed is initialised.

    Returns:
        A :class:`CKAResult` (float64 matrix on the CPU, the same on every rank).

    Raises (before anything is accumulated; the layer checks before any forward pass): ValueError for a layer name
    or pattern that matches nothing (listing close names), bad options, an empty ``data``, a layer that did not run
    in the first batch's forward, models or layers that give different numbers of rows for one batch, and — for the
    exact estimator — layers too wide for the memory (the message names the layer, its width, the memory and the
    two ways out: ``reduce=`` or ``estimator="minibatch"``).
    """
    # -- arguments (no forward yet) ----------------------------------------------------------------------------
    if not isinstance(model_a, nn.Module):
        raise TypeError(f"model_a must be a torch.nn.Module, got {type(model_a).__name__}")
    if model_b is not None and not isinstance(model_b, nn.Module):
        raise TypeError(f"model_b must be a torch.nn.Module or None, got {type(model_b).__name__}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be 'exact' or 'minibatch', got {estimator!r}")
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if estimator == "exact" and kernel != "linear":
        raise ValueError("the exact estimator is linear only (an exact RBF CKA needs every n×n Gram); use "
                         "estimator='minibatch' for kernel='rbf'")
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
    if sigma is not None and kernel != "rbf":
        raise ValueError("sigma is the RBF kernel's bandwidth: it needs kernel='rbf'")
    sigma_a, sigma_b = _check_sigma(sigma)
    _check_int(max_batches, "max_batches")
    if max_memory is not None:
        _check_int(max_memory, "max_memory")
    if input_fn is not None and not callable(input_fn):
        raise TypeError(f"input_fn must be a callable batch -> model input, got {type(input_fn).__name__}")
    if isinstance(data, (torch.Tensor, Mapping)):
        raise TypeError("data must be an iterable of batches (a DataLoader, a list of batches), not one "
                        f"{type(data).__name__}; wrap a single batch in a list: [batch]")
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of batches (a DataLoader, a list), got "
                        f"{type(data).__name__}") from None
    one_model = model_b is None or model_b is model_a
    mb = model_a if one_model else model_b
    pick = _default_input if input_fn is None else input_fn

    # -- hooks: one capture per model (layer errors here, before any forward) -----------------------------------
    caps: List[Capture] = []
    try:
        cap_a = Capture(model_a, layers_a, reduce=reduce, stop_early=True, arg="layers_a")
        caps.append(cap_a)
        names_a = cap_a.layers
        if one_model:
            names_b = names_a if layers_b is None else resolve_layers(model_a, layers_b, "layers_b")
            if names_b != names_a:  # one forward, capturing both lists
                cap_a.remove()
                caps = [Capture(model_a, names_a + [n for n in names_b if n not in names_a], reduce=reduce,
                                stop_early=True, arg="layers_a")]
                cap_a = caps[0]
            cap_b = cap_a
        else:
            cap_b = Capture(mb, layers_a if layers_b is None else layers_b, reduce=reduce, stop_early=True,
                            arg="layers_b")
            caps.append(cap_b)
            names_b = cap_b.layers
        same = one_model and names_a == names_b
        dev = torch.device(device) if device is not None else model_device(model_a)
        rank = torch.distributed.get_rank(group) if _dist_active() else 0
        total = None if not hasattr(data, "__len__") else len(data)  # type: ignore[arg-type]
        if total is not None and max_batches is not None:
            total = min(total, max_batches)

        models = [model_a] if one_model else [model_a, mb]
        modes = [(m, m.training) for model in models for m in model.modules()]
        bar = _Progress(progress and rank == 0, total)
        try:
            for m, _ in modes:
                m.training = False
            with torch.inference_mode():
                state, n, batches, skipped = _accumulate(
                    it, model_a, mb, one_model, cap_a, cap_b, names_a, names_b, pick, estimator, unbiased, kernel,
                    sigma_a, sigma_b, same, dev, max_batches, max_memory, reduce, bar, group)
                if _dist_active():
                    for t in state.tensors():
                        torch.distributed.all_reduce(t, group=group)
                    counts = torch.tensor([n, batches, skipped], dtype=torch.float64, device=state.cross.device)
                    torch.distributed.all_reduce(counts, group=group)
                    n, batches, skipped = (int(v) for v in counts.tolist())
                state.n = n
                matrix = state.compute()
        finally:
            bar.close()
            for m, tr in modes:
                m.training = tr
    finally:
        for c in caps:
            c.remove()
    if skipped:
        warnings.warn(f"fastcka.compare (minibatch): {skipped} examples in batches of fewer than 4 were left out "
                      "(the unbiased HSIC needs 4 rows per batch)", RuntimeWarning, stacklevel=2)
    return CKAResult(matrix=matrix.to("cpu").clone(), layers_a=list(names_a), layers_b=list(names_b), n=n,
                     batches=batches, estimator=estimator, kernel=kernel,
                     unbiased=True if estimator == "minibatch" else unbiased, reduce=_reduce_text(reduce),
                     sigma=None if sigma is None else (list(sigma) if isinstance(sigma, (tuple, list)) else sigma),
                     model_a=type(model_a).__name__, model_b=type(mb).__name__)


def _forward(cap: Capture, model: nn.Module, inp: Any, which: str, k: int) -> Dict[str, Tensor]:
    try:
        return cap.run(feed, model, to_device(inp, model_device(model)))
    except Exception as e:
        add_note(e, f"fastcka.compare: this error came from {which}'s forward ({type(model).__name__}) on batch {k} "
                    f"(input: {describe(inp)}); pick the model input from a batch with input_fn=")
        raise


def _accumulate(it, model_a, model_b, one_model, cap_a, cap_b, names_a, names_b, pick, estimator, unbiased, kernel,
                sigma_a, sigma_b, same, dev, max_batches, max_memory, reduce, bar, group):
    """The batch loop: forwards, first-batch checks (and the ranks' agreement), updates. Returns
    (state, n, batches, skipped examples)."""
    state = None
    n = batches = skipped = 0
    first: Optional[Tuple[List[Tensor], List[Tensor]]] = None
    error: Optional[str] = None
    k = 0
    for k, batch in enumerate(it):
        if max_batches is not None and k >= max_batches:
            break
        inp = pick(batch)
        acts = _forward(cap_a, model_a, inp, "model_a", k)
        acts_b = acts if one_model else _forward(cap_b, model_b, inp, "model_b", k)
        error = _check_batch(acts, acts_b, names_a, names_b, model_a, model_b, k)
        if error is not None and k > 0:
            raise ValueError(error)
        xa = [acts[nm] for nm in names_a] if error is None else []
        xb = [acts_b[nm] for nm in names_b] if error is None else []
        if state is None:
            first = (xa, xb)
            state = _start(first, error, estimator, unbiased, kernel, sigma_a, sigma_b, same, dev, max_memory,
                           names_a, names_b, reduce, group)
        rows = xa[0].shape[0]
        if estimator == "minibatch" and rows < 4:
            skipped += rows
        elif rows:
            state.update(xa, xb)
            n += rows
        batches += 1
        bar.update(n)
    if state is None:  # no batch on this rank
        state = _start(None, None, estimator, unbiased, kernel, sigma_a, sigma_b, same, dev, max_memory, names_a,
                       names_b, reduce, group)
    return state, n, batches, skipped


def _check_batch(acts_a, acts_b, names_a, names_b, model_a, model_b, k) -> Optional[str]:
    """The error message for a batch whose layers did not all run or disagree in rows; None when it is fine."""
    for which, acts, names, model in (("layers_a", acts_a, names_a, model_a), ("layers_b", acts_b, names_b, model_b)):
        missing = [nm for nm in names if nm not in acts]
        if missing:
            return (f"{which}: {missing} of {type(model).__name__} did not run in the forward of batch {k}; compare "
                    "layers that the forward pass uses (a module that is defined but never called gives nothing)")
    rows_a = {nm: acts_a[nm].shape[0] for nm in names_a}
    rows_b = {nm: acts_b[nm].shape[0] for nm in names_b}
    for which, rows in (("layers_a", rows_a), ("layers_b", rows_b)):
        if len(set(rows.values())) > 1:
            return (f"{which}: the layers gave different numbers of rows (examples) for batch {k}: {rows}; CKA pairs "
                    "example i of one layer with example i of the other (reduce= maps token outputs to one row "
                    "per example)")
    ra, rb = next(iter(rows_a.values())), next(iter(rows_b.values()))
    if ra == 0 and k == 0:
        return "batch 0 has no examples (0 rows); the first batch must hold data"
    if ra != rb:
        return (f"batch {k}: model_a's layers gave {ra} rows and model_b's {rb}; both models must see the same "
                "examples (a batch of the same size): check input_fn and the models' inputs")
    return None


def _start(first, error, estimator, unbiased, kernel, sigma_a, sigma_b, same, dev, max_memory, names_a, names_b,
           reduce, group):
    """States for the widths of the first batch. Under torch.distributed every rank agrees here (one
    all_gather_object): on an error anywhere, on the widths, and on the shift (the first data-holding rank's first
    example), so that the final all_reduce adds states about one shift."""
    local = None
    if first is not None and error is None:
        xa, xb = first
        local = {"widths_a": [x.shape[1] for x in xa], "widths_b": [y.shape[1] for y in xb],
                 "shift_a": [x[0].to("cpu", _F64) for x in xa], "shift_b": [y[0].to("cpu", _F64) for y in xb]}
        if estimator == "exact":
            error = _memory_error(local["widths_a"], local["widths_b"], names_a, names_b, unbiased, same, dev,
                                  max_memory, reduce)
    metas = [{"error": error, "data": local, "names": (names_a, names_b)}]
    if _dist_active():
        metas = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(metas, {"error": error, "data": local, "names": (names_a, names_b)},
                                            group=group)
    for r, m in enumerate(metas):
        if m["error"] is not None:
            raise ValueError(m["error"] if len(metas) == 1 else f"rank {r}: {m['error']}")
        if tuple(map(tuple, m["names"])) != (tuple(names_a), tuple(names_b)):
            raise ValueError(f"rank {r} compares layers {m['names']}, this rank {(names_a, names_b)}")
    data = [m["data"] for m in metas if m["data"] is not None]
    if not data:
        raise ValueError("data yielded no batch" + (" on any rank" if len(metas) > 1 else "")
                         + ": nothing to compare (an empty DataLoader or iterable)")
    d0 = data[0]
    for d in data[1:]:
        if (d["widths_a"], d["widths_b"]) != (d0["widths_a"], d0["widths_b"]):
            raise ValueError(f"ranks disagree on the layer widths: {d['widths_a']}, {d['widths_b']} vs "
                             f"{d0['widths_a']}, {d0['widths_b']}")
    if estimator == "exact":
        return _CrossMoments(d0["widths_a"], d0["widths_b"], d0["shift_a"], d0["shift_b"], unbiased, same, dev)
    return _MinibatchSums(len(names_a), len(names_b), kernel, sigma_a, sigma_b, same, dev)


def _memory_error(widths_a, widths_b, names_a, names_b, unbiased, same, dev, max_memory, reduce) -> Optional[str]:
    need = _CrossMoments.nbytes(widths_a, widths_b, unbiased, same)
    limit = max_memory
    if limit is None:
        free = _free_bytes(dev)
        limit = None if free is None else free // 2
    if limit is None or need <= limit:
        return None
    u = 1 if unbiased else 0
    sides = [("layers_a", names_a, widths_a, widths_b), ("layers_b", names_b, widths_b, widths_a)]
    side, names, widths, others, i = max(((s, nm, w, o, i) for s, nm, w, o in sides for i in range(len(w))),
                                         key=lambda t: t[2][t[4]])
    p, name = widths[i], names[i]
    share = 8 * (1 + p + u) * ((1 + p + u) + sum(1 + q + u for q in others))  # its own moment and its cross blocks
    why = "max_memory" if max_memory is not None else f"half the free memory of {dev}"
    where = f"{_fmt_bytes(limit)} ({why})"
    return (f"{side}: layer {name!r} gives {p:,} features per example (reduce={_reduce_text(reduce)!r}); the exact "
            f"estimator keeps float64 moments of size width², {_fmt_bytes(share)} for this layer and "
            f"{_fmt_bytes(need)} for all the layers, more than {where}. Two ways out: reduce= to fewer features "
            "(reduce='mean' pools token outputs and feature maps to one vector per example), or "
            "estimator='minibatch' (Nguyen et al.'s minibatch CKA: memory per batch, not per width²)")
