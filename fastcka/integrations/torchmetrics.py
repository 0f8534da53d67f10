"""torchmetrics adapter: :class:`CKA`, the exact streaming linear CKA as a ``torchmetrics.Metric``.

Usage (Lightning: ``self.log("cka", self.cka)`` works, syncing across ranks at epoch end)::

    from fastcka.integrations.torchmetrics import CKA
    metric = CKA(unbiased=True)
    metric.update(x, y)        # per batch, on every rank
    value = metric.compute()   # global over all ranks (torchmetrics syncs and unsyncs around compute)

The states are the additive sums of :class:`fastcka.streaming.LinearCKA` (count, shift, the float64 moment matrix
of ``[1, X − c, Y − c, row norms]``), packed into one self-describing 1-D float64 tensor per accumulator:

    [version, L, unbiased, n, widths (L), shift (F), moments (D·D)].

The packs stay float64 whatever is done to the module's dtype (``.half()``, ``.to(torch.bfloat16)``,
``set_dtype``, a half-precision trainer): :meth:`CKA._apply` moves them between devices but never casts them, so
the moments cannot overflow or lose digits. ``compute()`` returns float64.

Why the reduction is ``"cat"`` of packs rather than ``"sum"``: to stay exact at large offsets every accumulator
keeps its moments about its own shift (its first example), so two ranks' moments must be moved to a common shift
before they add; and a rank that saw no data does not know the widths, so it cannot allocate a zero state of the
right shape for a plain sum. torchmetrics gathers every rank's pack (``dist_reduce_fx="cat"``; a rank with no data
contributes an empty tensor), and :meth:`CKA.compute` merges them exactly (re-shift, then sum) — the same
arithmetic as :meth:`fastcka.streaming.LinearCKAMatrix.sync`. ``update`` keeps a single pack and updates it in
place on the device, without host synchronisation (after ``forward()`` or a device move it re-packs once).

Requires ``torchmetrics`` (an optional dependency: ``pip install fastcka[torchmetrics]``).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch

try:
    from torchmetrics import Metric
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fastcka.integrations.torchmetrics needs torchmetrics: pip install fastcka[torchmetrics]") from e

from fastcka._validation import check_flag, renamed_options, warn_renamed
from fastcka.streaming import _STATE_VERSION, LinearCKA, _block_indicator, _moment_update

Tensor = torch.Tensor

__all__ = ["CKA"]

_F64 = torch.float64
_PACK_VERSION = 1.0
_HEADER = 4  # version, L, unbiased, n


def _pack(acc: LinearCKA) -> Tensor:
    """One 1-D float64 tensor holding ``acc``'s local states (see the module docstring for the layout)."""
    assert acc._moments is not None and acc._shift is not None and acc._widths is not None
    dev = acc._moments.device
    header = torch.tensor([_PACK_VERSION, len(acc._widths), float(acc.unbiased), float(acc.n)], dtype=_F64, device=dev)
    widths = torch.tensor(acc._widths, dtype=_F64, device=dev)
    return torch.cat([header, widths, acc._shift.reshape(-1), acc._moments.reshape(-1)])


def _layout(widths: Tuple[int, ...], unbiased: bool) -> Tuple[int, int, int]:
    """(offset of the shift, offset of the moments, D) inside a pack."""
    f = sum(widths)
    d = 1 + f + (len(widths) if unbiased else 0)
    off_shift = _HEADER + len(widths)
    return off_shift, off_shift + f, d


def _unpack(packs: Union[Tensor, List[Tensor]], unbiased: bool) -> LinearCKA:
    """Merge a concatenation (or list) of packs into one :class:`LinearCKA` (exactly; reads headers on the host)."""
    flat = [packs] if isinstance(packs, Tensor) else list(packs)
    acc = LinearCKA(unbiased=unbiased)
    for t in flat:
        t = t.reshape(-1)
        off = 0
        while off < t.numel():
            version, nl, deb, n = t[off : off + _HEADER].tolist()
            if version != _PACK_VERSION:
                raise ValueError(f"CKA state pack has version {version}, expected {_PACK_VERSION}")
            if bool(deb) != unbiased:
                raise ValueError(f"CKA state pack has unbiased={bool(deb)}, this metric has unbiased={unbiased}")
            nl = int(nl)
            widths = tuple(int(w) for w in t[off + _HEADER : off + _HEADER + nl].tolist())
            o_shift, o_mom, d = _layout(widths, unbiased)
            part = LinearCKA(unbiased=unbiased)
            part.load_state_dict(
                {
                    "version": _STATE_VERSION,
                    "kind": "LinearCKA",
                    "unbiased": unbiased,
                    "num_layers": nl,
                    "names": ("x", "y"),
                    "n": int(n),
                    "widths": widths,
                    "shift": t[off + o_shift : off + o_mom],
                    "moments": t[off + o_mom : off + o_mom + d * d].view(d, d),
                }
            )
            acc.merge(part)
            off += o_mom + d * d
    return acc


class CKA(Metric):
    """Exact linear CKA (biased or debiased) of two representations over all batches and all ranks.

    ``update(x, y)`` takes paired rows (x: (b, ...), y: (b, ...)); ``compute()`` returns a 0-d float64 tensor equal
    to :meth:`fastcka.streaming.LinearCKA.compute` on the same data (torchmetrics syncs across ranks first). Ranks
    may see unequal numbers of batches or none. ``forward(x, y)`` returns the CKA of that batch alone (it needs
    n ≥ 2, or n ≥ 4 when debiased). 0 for a constant representation.

    Args:
        unbiased: the debiased CKA (HSIC₁ in Kornblith et al.'s feature-space form) instead of the biased one (a
            bool; ``debiased=`` is its deprecated name).
        **kwargs: passed to ``torchmetrics.Metric`` (``process_group``, ``dist_sync_on_step``, ...).

    The states stay float64 whatever the module's dtype (see the module docstring); ``compute()`` is float64.
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = None
    full_state_update = False
    packs: Union[List[Tensor], Tensor]

    def __init__(self, *, unbiased: bool = False, **kwargs: Any) -> None:
        if "debiased" in kwargs:  # the rest of kwargs belongs to torchmetrics.Metric
            legacy = {"debiased": kwargs.pop("debiased")}
            unbiased = renamed_options("CKA", legacy, unbiased=("debiased", unbiased, False))
        unbiased = check_flag(unbiased, "unbiased")
        super().__init__(**kwargs)
        self.unbiased = unbiased
        self.add_state("packs", default=[], dist_reduce_fx="cat")
        self._cache: Optional[Tuple[int, Tuple[int, ...]]] = None  # (id of the live pack, widths)

    @property
    def debiased(self) -> bool:
        """Deprecated name of :attr:`unbiased`."""
        warn_renamed("CKA.debiased", ".unbiased")
        return self.unbiased

    def _apply(self, fn: Callable, exclude_state: Any = ()) -> "CKA":
        """torchmetrics' ``_apply`` for everything but the packs, which follow a device move and never a dtype
        cast (``.half()``, ``.to(torch.bfloat16)`` and ``set_dtype`` would make the moments overflow)."""
        this = super()._apply(fn, exclude_state=tuple(exclude_state) + ("packs",))
        packs = this.packs if isinstance(this.packs, list) else [this.packs]
        if packs:
            probe = fn(torch.zeros((), dtype=_F64, device=packs[0].device))
            moved = [p.to(probe.device) for p in packs]
            if this._cache is not None and len(packs) == 1 and id(packs[0]) == this._cache[0]:
                this._cache = (id(moved[0]), this._cache[1])
            this.packs = moved if isinstance(this.packs, list) else moved[0]
        return this

    def _live_pack(self) -> Optional[Tuple[Tensor, Tuple[int, ...]]]:
        """The single pack updated in place, re-packing (one host read) if torchmetrics replaced the list."""
        packs = self.packs
        if isinstance(packs, list) and len(packs) == 1 and self._cache is not None and id(packs[0]) == self._cache[0]:
            return packs[0], self._cache[1]
        nonempty = [packs] if isinstance(packs, Tensor) else [p for p in packs if p.numel() > 0]
        nonempty = [p for p in nonempty if p.numel() > 0]
        if not nonempty:
            self._cache = None
            return None
        acc = _unpack(nonempty, self.unbiased)
        pack = _pack(acc)
        self.packs = [pack]
        self._cache = (id(pack), acc.widths)
        return pack, acc.widths

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add one minibatch of paired rows. ValueError when x or y changes width or their row counts differ."""
        live = self._live_pack()
        if live is None:
            acc = LinearCKA(unbiased=self.unbiased)
            acc.update(x, y)
            if acc.n == 0:
                return
            pack = _pack(acc)
            self.packs = [pack]
            self._cache = (id(pack), acc.widths)
            return
        pack, widths = live
        checker = LinearCKA(unbiased=self.unbiased)
        checker._widths = widths
        mats = checker._prepare((x, y))
        b = mats[0].shape[0]
        if b == 0:
            return
        if mats[0].device != pack.device:
            raise ValueError(f"batch is on {mats[0].device} but the metric states are on {pack.device}")
        o_shift, o_mom, d = _layout(widths, self.unbiased)
        blocks = _block_indicator(widths, _F64, pack.device) if self.unbiased else None
        with torch.no_grad():
            _moment_update(pack[o_mom : o_mom + d * d].view(d, d), pack[o_shift:o_mom], mats, blocks)
            pack[3:4].add_(b)

    def compute(self) -> Tensor:
        """0-d float64 CKA over everything seen (on all ranks when torchmetrics has synced the states)."""
        packs = self.packs
        nonempty = [packs] if isinstance(packs, Tensor) else list(packs)
        nonempty = [p for p in nonempty if p.numel() > 0]
        acc = _unpack(nonempty, self.unbiased)
        return acc.compute()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The CKA of this batch alone, accumulating it too; the global and batch packs are merged back into one
        (so memory does not grow with the number of steps)."""
        out = super().forward(*args, **kwargs)
        if isinstance(self.packs, list) and len(self.packs) > 1:
            self._live_pack()
        return out

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """torchmetrics' sync, with a float64 empty pack standing in for a rank that saw no data (torchmetrics
        would otherwise gather a default-dtype empty tensor, which mismatches the other ranks' float64 packs)."""
        if isinstance(self.packs, list) and len(self.packs) == 0:
            self.packs = [torch.empty(0, dtype=_F64, device=self.device)]
        super().sync(*args, **kwargs)
