"""Exact streaming CKA: accumulate additive states one minibatch at a time, across ranks, then compute.

Two families, each in a pair form and a matrix form (every layer against every layer):

* :class:`LinearCKA` / :class:`LinearCKAMatrix` — the **exact** linear CKA (biased, or debiased with
  ``unbiased=True``) of the whole
  stream, as if all examples had been stacked into one matrix. The states are additive sums
  (derived below, under "Linear states"); centering happens only in :meth:`compute`.
* :class:`MinibatchCKA` / :class:`MinibatchCKAMatrix` — minibatch CKA (Nguyen et al. 2021):
  Σ_b HSIC₁(K_b, L_b) / √(Σ_b HSIC₁(K_b, K_b) · Σ_b HSIC₁(L_b, L_b)), linear or RBF kernel. This is a different
  estimator (it is not the CKA of the stacked data); its states, the three HSIC₁ sums, are additive too.

All four follow the torchmetrics shape: ``update(...)``, ``compute()``, ``reset()``, ``merge(other)``,
``state_dict()`` / ``load_state_dict()``, ``sync(group)`` / ``unsync()``. States live on the device of the first
batch; ``update`` launches device work only (no host synchronisation; the checks use shapes alone).

Linear states
-------------
For representations X₁ … X_L (rows are examples, X_l of width p_l) the accumulator keeps, in float64,

    n and  M = Σ_batches Zᵀ Z,   Z = [1, X₁ − c₁, …, X_L − c_L, a₁, …, a_L],   a_l,i = ‖x_l,i − c_l‖²,

one (D × D) moment matrix with D = 1 + Σ p_l (+ L for the debiased form, which needs the row-norm columns a_l).
It holds every state the formulas need: the count (M₀₀), the column sums (M₀,x), all cross-products X_lᵀX_m, and
for the debiased form Σ a_l, Σ a_l x_m (vectors) and Σ a_l a_m. The shift c is the first example seen (so a
constant representation gives exactly zero states and CKA 0); with it, data whose mean is 10³ times its spread
loses no digits to the raw-moment cancellation. Accumulators with different shifts (other ranks, :meth:`merge`)
are brought to a common shift exactly: Z' = Z T for a (D × D) matrix T, so M' = Tᵀ M T.

At :meth:`compute`, with μ_l = (column sums)/n:

* centred cross-products  C_lm = X_lᵀX_m − n μ_l μ_mᵀ  (= X_l,cᵀ X_m,c), biased HSIC ∝ ‖C_lm‖²_F;
* debiased (Kornblith et al.'s feature-space form, ``reference.feature_space_linear_cka(unbiased=True)``):
  with the centred row norms d_l,i = ‖x_l,i − x̄_l‖² (x̄_l the mean),

      HSIC₁ ∝ ‖C_lm‖²_F − n/(n−2) Σᵢ d_l,i d_m,i + (Σᵢ d_l,i)(Σᵢ d_m,i) / ((n−1)(n−2)).

  In shifted coordinates d_l,i = a_l,i − 2 μ_l·x_l,i + ‖μ_l‖² is linear in the columns of Z: d_l = Z w_l with
  w_l = (‖μ_l‖² at the 1-column, −2μ_l at X_l's columns, 1 at a_l's column). Hence, exactly,

      Σᵢ d_l,i d_m,i = w_lᵀ M w_m      and      Σᵢ d_l,i = (M w_l)₀.

  Expanded, this uses Σ a_l a_m, the vectors Σ a_l x_m, the moment matrices and the column sums: the minimal
  additive set for the debiased form.

CKA is 0 where a self-HSIC is ≤ 0 (a constant representation), as in :mod:`fastcka.reference`. Every
``compute()`` returns float64, whatever the input dtype (the states are float64 sums).

Inputs are checked as :func:`fastcka.cka` checks them (one validator, :func:`fastcka._validation.as_matrix`): real
floating point (integer, bool and complex tensors raise TypeError), at least one feature per example. The option
``unbiased=`` was called ``debiased=`` in fastcka 0.1; the old name is still accepted, with a DeprecationWarning.

The update is one function, :func:`_moment_update` (one float64 GEMM on the concatenated [1, X − c, a]): it is
the piece meant to become a single C++ op.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ._validation import as_matrix, check_flag, renamed_options, warn_renamed

Tensor = torch.Tensor

__all__ = ["LinearCKA", "LinearCKAMatrix", "MinibatchCKA", "MinibatchCKAMatrix"]

_F64 = torch.float64
# 2: the estimator flag is stored as "unbiased" (version 1 called it "debiased"; both load)
_STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------


def _block_indicator(widths: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """B (F × L) with B[j, l] = 1 when feature j belongs to representation l."""
    ids = torch.repeat_interleave(torch.arange(len(widths), device=device), torch.tensor(list(widths), device=device))
    return torch.nn.functional.one_hot(ids, len(widths)).to(dtype)


def _cka_from_hsic_matrix(h: Tensor) -> Tensor:
    """CKA_lm = h_lm / √(h_ll h_mm), 0 where h_ll h_mm ≤ 0 (the reference convention), NaN where a term is NaN
    (as in :func:`fastcka.cka_from_terms`: 0·(sum) is 0 for finite terms, NaN otherwise). No host sync."""
    from .functional import cka_from_terms  # the one place the ratio rule lives

    d = torch.diagonal(h)
    return cka_from_terms(torch.stack(torch.broadcast_tensors(h, d[:, None], d[None, :]), -1))


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device(group: Any) -> torch.device:
    """Device for collectives on a rank that holds no state yet (it saw no data): CUDA for NCCL, else CPU."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_meta(meta: Dict[str, Any], group: Any) -> List[Dict[str, Any]]:
    world = torch.distributed.get_world_size(group)
    out: List[Any] = [None] * world
    torch.distributed.all_gather_object(out, meta, group=group)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the linear moment states: update, re-shift, compute (pure functions on tensors)
# ----------------------------------------------------------------------------------------------------------------


def _moment_update(moments: Tensor, shift: Tensor, reps: Sequence[Tensor], blocks: Optional[Tensor]) -> None:
    """``moments += Zᵀ Z`` in place, Z = [1, X − c, a] in float64 (a = per-representation ‖x − c‖², present
    when ``blocks`` (the F × L block indicator) is given, i.e. for the unbiased (debiased CKA) form).

    This is the whole per-batch update — a float64 copy into one (b × D) buffer, a shift, optionally a row-norm
    reduction, and one float64 GEMM — written to move into one C++ op (``fastcka::moment_update``) unchanged.
    """
    b = reps[0].shape[0]
    f = shift.numel()
    z = torch.empty(b, moments.shape[0], dtype=_F64, device=moments.device)
    z[:, 0] = 1.0
    off = 1
    for r in reps:  # copy_ converts to float64 in place: no intermediate concatenation
        z[:, off : off + r.shape[1]].copy_(r)
        off += r.shape[1]
    x = z[:, 1 : 1 + f]
    x.sub_(shift)
    if blocks is not None:  # per representation, not (x * x) @ blocks: a GEMM would spread one NaN to every a_l
        off = 0
        for l, r in enumerate(reps):
            xl = x[:, off : off + r.shape[1]]
            torch.sum(xl * xl, dim=1, out=z[:, 1 + f + l])
            off += r.shape[1]
    moments.addmm_(z.T, z)


def _reshift(moments: Tensor, old: Tensor, new: Tensor, blocks: Tensor, with_norms: bool) -> Tensor:
    """Moments about shift ``old`` -> the same moments about shift ``new`` (exact linear map M' = Tᵀ M T).

    A column whose diagonal moment is not finite (a representation with a NaN/Inf entry, or one that overflowed)
    keeps NaN in its row and column, and only there: the GEMMs run on the finite part (T's zeros would otherwise
    turn its infinities into NaN everywhere)."""
    d = (new - old).to(moments.device, _F64)
    f = d.numel()
    t = torch.eye(moments.shape[0], dtype=_F64, device=moments.device)
    t[0, 1 : 1 + f] = -d  # x' = x − d·1
    if with_norms:  # a' = a − 2 d·x + ‖d‖²
        t[0, 1 + f :] = (d * d) @ blocks
        t[1 : 1 + f, 1 + f :] = -2.0 * d[:, None] * blocks
    bad = ~torch.isfinite(torch.diagonal(moments))
    finite = torch.where(torch.isfinite(moments), moments, torch.zeros((), dtype=_F64, device=moments.device))
    out = t.T @ finite @ t
    return torch.where(bad[:, None] | bad[None, :], torch.full_like(out, math.nan), out)


def _linear_hsic_from_moments(n: int, moments: Tensor, blocks: Tensor, unbiased: bool) -> Tensor:
    """(L × L) matrix of the (unnormalised) HSIC between every pair of representations, each representation l
    scaled by an exact power of two d_l (entry (l, m) is d_l² d_m² HSIC_lm): the CKA ratio h_lm / √(h_ll h_mm) is
    unchanged, bit for bit, and no value overflows. See the module docstring for the formulas.

    The scaling brings each representation's largest diagonal moment near 1 before any product, so a float64
    representation with entries of 1e150 still has its CKA with the others. A representation whose own moments are
    not finite (a NaN or Inf entry, or values beyond ~1e154 whose squares overflow float64) gives NaN in its own row
    and column only: its scale is 0, so it enters the GEMMs below as zeros (which would otherwise spread a NaN or an
    Inf·0 to every pair), and its row and column are set to NaN at the end (on the device: no host sync)."""
    f, nl = blocks.shape
    dev = moments.device
    zero = torch.zeros((), dtype=_F64, device=dev)
    diag = torch.diagonal(moments)
    # the largest feature moment of each representation, without multiplying a non-finite one by blocks' zeros
    top = torch.where(blocks > 0, diag[1 : 1 + f, None], zero).amax(0)
    bad = ~torch.isfinite(top)
    if unbiased:  # the row-norm column can overflow (‖x‖⁴) before the features do (x²)
        bad = bad | ~torch.isfinite(diag[1 + f :])
    _, e = torch.frexp(torch.where(bad | (top <= 0), torch.ones_like(top), top))  # top = m·2^e, m ∈ [0.5, 1)
    half = torch.clamp(-torch.div(e, 2, rounding_mode="floor"), -500, 500)  # d_l = 2^half: d_l²·top ∈ [0.5, 2)
    d = torch.where(bad, zero, torch.ldexp(torch.ones_like(top), half))
    col = torch.cat([torch.ones(1, dtype=_F64, device=dev),
                     torch.where(blocks > 0, d, zero).amax(1)]  # features
                    + ([d * d] if unbiased else []))  # row norms scale as d²
    scaled = (moments * col[:, None]) * col[None, :]  # two steps: col_i·col_j alone could underflow
    scaled = torch.where(torch.isfinite(scaled), scaled, zero)  # a bad representation's Inf·0
    h = _linear_hsic_finite(n, scaled, blocks, unbiased)
    return torch.where(bad[:, None] | bad[None, :], torch.full_like(h, math.nan), h)


_STREAM_NOISE = 2.0**-40


def _linear_hsic_finite(n: int, moments: Tensor, blocks: Tensor, unbiased: bool) -> Tensor:
    f, nl = blocks.shape
    s = moments[0, 1 : 1 + f]
    c = moments[1 : 1 + f, 1 : 1 + f] - torch.outer(s, s) / n  # centred cross-products X_cᵀ Y_c
    fro = blocks.T @ (c * c) @ blocks  # ‖C_lm‖²_F
    if not unbiased:
        return fro
    mu = s / n
    w = torch.zeros(moments.shape[0], nl, dtype=_F64, device=moments.device)
    w[0] = (mu * mu) @ blocks
    w[1 : 1 + f] = -2.0 * mu[:, None] * blocks
    w[1 + f :] = torch.eye(nl, dtype=_F64, device=moments.device)
    mw = moments @ w
    dd = w.T @ mw  # Σᵢ d_l,i d_m,i (centred row norms)
    tr = mw[0]  # Σᵢ d_l,i
    t1, t2 = (n / (n - 2.0)) * dd, torch.outer(tr, tr) / ((n - 1.0) * (n - 2.0))
    h = fro - t1 + t2
    # A numerator that cancels to within rounding noise of its terms is 0, as exact arithmetic gives for degenerate
    # representations (all rows but one equal: the U-centred Gram is exactly 0); left as noise, the CKA ratio of two
    # such noises was 8.1. 2⁻⁴⁰ of the terms: the float64 moments' own accumulated rounding stays below it.
    noise = _STREAM_NOISE * (fro.abs() + t1.abs() + t2.abs())
    return torch.where(h.abs() <= noise, torch.zeros_like(h), h)


# ----------------------------------------------------------------------------------------------------------------
# the per-batch HSIC₁ used by minibatch CKA (the one switch point to the fused op)
# ----------------------------------------------------------------------------------------------------------------


def _hsic1_terms(x: Tensor, y: Tensor, kernel: str, sigma_x: Optional[float], sigma_y: Optional[float]) -> Tensor:
    """float64 [HSIC₁(K,L), HSIC₁(K,K), HSIC₁(L,L)] of one minibatch (unbiased HSIC, Song et al. 2012).

    The only place that does kernel HSIC math: one call of the extension's fused ``fastcka.hsic_terms`` (no host
    sync with σ given; σ None takes each side's exact median).
    """
    from .functional import hsic_terms

    if kernel == "linear":
        return hsic_terms(x, y, kernel="linear", unbiased=True).to(_F64)
    return hsic_terms(x, y, kernel=kernel, unbiased=True, sigma=(sigma_x, sigma_y)).to(_F64)


# ----------------------------------------------------------------------------------------------------------------
# shared accumulator plumbing
# ----------------------------------------------------------------------------------------------------------------


def _checked_state(state: Any, kind: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """``state`` after the checks every ``load_state_dict`` shares: a mapping, a readable version, the right
    kind, every key present (ValueError naming the first missing one)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a mapping from {kind}.state_dict(), got {type(state).__name__}")
    readable = ", ".join(str(v) for v in _READABLE_VERSIONS)
    if "version" not in state:
        raise ValueError(f"state_dict has no 'version' entry: not a {kind}.state_dict() (this fastcka reads "
                         f"versions {readable})")
    version = state["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in _READABLE_VERSIONS:
        raise ValueError(f"state_dict has version {version!r}; this fastcka reads versions {readable} (a state saved "
                         "by a newer fastcka needs that version)")
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for {state.get('kind')!r}, not {kind!r}")
    for key in keys:
        if key not in state:
            raise ValueError(f"state_dict has no {key!r} entry (a version-{version} {kind} state needs "
                             f"{', '.join(repr(k) for k in keys)})")
    return state


def _state_int(state: Mapping[str, Any], key: str, minimum: int) -> int:
    """``state[key]`` as an int ≥ ``minimum`` (ValueError naming the key otherwise)."""
    v = state[key]
    if isinstance(v, Tensor) and v.numel() == 1 and not v.is_floating_point():
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"state_dict[{key!r}] must be an int >= {minimum}, got {v!r}")
    return v


def _state_widths(state: Mapping[str, Any], num_layers: Optional[int]) -> Tuple[int, ...]:
    """``state["widths"]``: one positive int per representation, as many as ``num_layers`` when that is set."""
    w = state["widths"]
    if not isinstance(w, (list, tuple)) or not w or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in w):
        raise ValueError(f"state_dict['widths'] must be a non-empty sequence of positive ints, got {w!r}")
    if num_layers is not None and len(w) != num_layers:
        raise ValueError(f"state_dict['widths'] has {len(w)} entries but the state is for {num_layers} representations")
    return tuple(w)


def _state_tensor(state: Mapping[str, Any], key: str, shape: Tuple[int, ...]) -> Tensor:
    """``state[key]``: a real floating-point tensor of exactly ``shape`` (ValueError naming the key otherwise)."""
    t = state[key]
    if not isinstance(t, Tensor) or t.is_complex() or not t.is_floating_point():
        raise ValueError(f"state_dict[{key!r}] must be a floating-point tensor, got "
                         f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"state_dict[{key!r}] has shape {tuple(t.shape)}, expected {shape} for the state's widths")
    return t


def _state_num_layers(state: Mapping[str, Any], mine: Optional[int]) -> Optional[int]:
    """The state's ``num_layers`` (None or a positive int), which must agree with the accumulator's own."""
    nl = state["num_layers"]
    if nl is not None and (isinstance(nl, bool) or not isinstance(nl, int) or nl < 1):
        raise ValueError(f"state_dict['num_layers'] must be None or a positive int, got {nl!r}")
    if mine is not None and nl is not None and nl != mine:
        raise ValueError(f"state_dict is for {nl} representations, this accumulator takes {mine}")
    return nl if nl is not None else mine


class _Accumulator:
    """Common plumbing: representation checks, sync/unsync bookkeeping, reset."""

    _kind = "accumulator"

    def __init__(self, num_layers: Optional[int], names: Optional[Sequence[str]]) -> None:
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise ValueError(f"num_layers must be a positive int or None, got {num_layers!r}")
        if names is not None:
            names = tuple(str(s) for s in names)
            if num_layers is not None and len(names) != num_layers:
                raise ValueError(f"names has {len(names)} entries but num_layers={num_layers}")
            num_layers = len(names)
        self.num_layers: Optional[int] = num_layers
        self.names: Optional[Tuple[str, ...]] = names
        self.reset()

    # -- to be provided by subclasses --------------------------------------------------------------------------
    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- input handling ------------------------------------------------------------------------------------------
    def _rep_name(self, i: int) -> str:
        if self.names is not None:
            return self.names[i]
        return f"reps[{i}]"

    def _prepare(self, reps: Sequence[Any]) -> List[Tensor]:
        """Flatten to (n, features), check counts, row counts and widths against the first batch."""
        if self.num_layers is not None and len(reps) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} representations per update, got {len(reps)}")
        if len(reps) < 1:
            raise ValueError("update() needs at least one representation")
        mats = [as_matrix(r, self._rep_name(i)) for i, r in enumerate(reps)]
        n0 = mats[0].shape[0]
        for i, m in enumerate(mats[1:], 1):
            if m.shape[0] != n0:
                raise ValueError(
                    f"{self._rep_name(i)} has {m.shape[0]} examples but {self._rep_name(0)} has {n0}: "
                    "every representation of a batch needs the same number of rows (examples)"
                )
            if m.device != mats[0].device:
                raise ValueError(f"{self._rep_name(i)} is on {m.device} but {self._rep_name(0)} is on {mats[0].device}")
        widths = getattr(self, "_widths", None)
        if widths is not None:
            for i, m in enumerate(mats):
                if m.shape[1] != widths[i]:
                    raise ValueError(
                        f"{self._rep_name(i)} has {m.shape[1]} features per example but the first batch had "
                        f"{widths[i]}: the width of a representation must not change between batches"
                    )
        return mats

    # -- distributed ---------------------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """True while :meth:`compute` returns the global (all-rank) value from the last :meth:`sync`."""
        return self._synced is not None

    def unsync(self) -> "_Accumulator":
        """Drop the global view from :meth:`sync`; :meth:`compute` then uses the local states again."""
        self._synced = None
        return self

    def _check_merge(self, other: "_Accumulator") -> None:
        if type(other) is not type(self):
            raise TypeError(f"merge() needs another {type(self).__name__}, got {type(other).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# exact linear CKA
# ----------------------------------------------------------------------------------------------------------------


class LinearCKAMatrix(_Accumulator):
    """Exact streaming linear CKA between every pair of L representations (e.g. all layers of a network).

    Each :meth:`update` takes the L representations of one minibatch (same number of rows, any widths; inputs of
    shape (n, ...) are flattened to (n, features)); :meth:`compute` returns the (L × L) matrix of the linear CKA of
    the whole stream — the value :func:`fastcka.reference.linear_cka` gives on all rows stacked (biased), or the
    debiased CKA (``unbiased=True``, HSIC₁ in Kornblith et al.'s feature-space form). See the module docstring
    for the states and formulas. :meth:`compute` returns float64 whatever the input dtype.

    Cost: one float64 GEMM of a (b × D) matrix per batch, D = 1 + Σ p_l (+ L if unbiased); memory D² float64 for
    the state. States are kept on the first batch's device and accumulate under ``torch.no_grad``.

    Args:
        num_layers: number of representations per update (inferred from the first update when ``None``).
        unbiased: compute the debiased CKA (needs n ≥ 4 examples in total) instead of the biased one (n ≥ 2); a
            bool (TypeError otherwise). ``debiased=`` is its deprecated name.
        names: optional names of the representations, used in error messages (sets ``num_layers``).

    Example::

        acc = LinearCKAMatrix(num_layers=3)
        for batch in loader:
            acc.update(h0(batch), h1(batch), h2(batch))
        acc.sync()            # no-op without torch.distributed
        cka = acc.compute()   # (3, 3) float64
    """

    _kind = "LinearCKAMatrix"

    def __init__(
        self,
        num_layers: Optional[int] = None,
        *,
        unbiased: bool = False,
        names: Optional[Sequence[str]] = None,
        **deprecated: Any,
    ) -> None:
        unbiased = renamed_options(type(self).__name__, deprecated, unbiased=("debiased", unbiased, False))
        self.unbiased = check_flag(unbiased, "unbiased")
        super().__init__(num_layers, names)

    @property
    def debiased(self) -> bool:
        """Deprecated name of :attr:`unbiased`."""
        warn_renamed(f"{type(self).__name__}.debiased", ".unbiased")
        return self.unbiased

    # -- state -----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every state (and any synced view); widths are re-learned from the next batch."""
        self._widths: Optional[Tuple[int, ...]] = None
        self._n: int = 0
        self._shift: Optional[Tensor] = None
        self._moments: Optional[Tensor] = None
        self._blocks: Optional[Tensor] = None
        self._synced: Optional[Tuple[int, Tensor, Tensor]] = None

    @property
    def n(self) -> int:
        """Number of examples accumulated locally (a host-side int, known without a device sync)."""
        return self._n

    @property
    def widths(self) -> Optional[Tuple[int, ...]]:
        """Feature widths of the representations (``None`` before the first non-empty batch)."""
        return self._widths

    @property
    def device(self) -> Optional[torch.device]:
        return None if self._moments is None else self._moments.device

    def _dim(self, widths: Sequence[int]) -> int:
        return 1 + sum(widths) + (len(widths) if self.unbiased else 0)

    def _init_states(self, widths: Tuple[int, ...], shift: Tensor, device: torch.device) -> None:
        self._widths = widths
        if self.num_layers is None:
            self.num_layers = len(widths)
        self._shift = shift.to(device, _F64)
        d = self._dim(widths)
        self._moments = torch.zeros(d, d, dtype=_F64, device=device)
        self._blocks = _block_indicator(widths, _F64, device)

    # -- update ------------------------------------------------------------------------------------------------
    def update(self, *reps: Tensor) -> None:
        """Add one minibatch: ``update(x0, x1, ..., x_{L-1})`` (or one list/tuple of them). Rows are examples.

        Raises ValueError when a representation's width differs from the first batch's (naming both widths),
        when the representations disagree in their number of rows, or when their count changes. A batch with no
        rows is accepted and changes nothing.
        """
        if len(reps) == 1 and isinstance(reps[0], (list, tuple)):
            reps = tuple(reps[0])
        mats = self._prepare(reps)
        b = mats[0].shape[0]
        if b == 0:
            return
        with torch.no_grad():
            if self._moments is None:
                shift = torch.cat([m[0].to(_F64) for m in mats])  # the first example: exact zeros for constants
                self._init_states(tuple(m.shape[1] for m in mats), shift, mats[0].device)
            elif mats[0].device != self._moments.device:
                raise ValueError(f"batch is on {mats[0].device} but the states are on {self._moments.device}")
            _moment_update(self._moments, self._shift, mats, self._blocks if self.unbiased else None)
        self._n += b
        self._synced = None

    # -- compute -----------------------------------------------------------------------------------------------
    def _current(self) -> Tuple[int, Optional[Tensor], Optional[Tensor]]:
        if self._synced is not None:
            return self._synced
        return self._n, self._shift, self._moments

    def compute(self) -> Tensor:
        """(L × L) float64 CKA matrix on the states' device (global after :meth:`sync`, local otherwise).

        Entries are 0 where a representation is constant (its self-HSIC is ≤ 0). Raises RuntimeError before any
        data, ValueError when n < 2 (biased) or n < 4 (unbiased) examples were seen in total.
        """
        n, _, moments = self._current()
        if n == 0 or moments is None:
            where = "on any rank" if self._synced is not None else "yet"
            raise RuntimeError(
                f"{type(self).__name__}.compute() called before any data: no non-empty batch was seen {where}; "
                "call update() first"
            )
        need = 4 if self.unbiased else 2
        if n < need:
            form = "unbiased" if self.unbiased else "biased"
            raise ValueError(f"the {form} linear CKA needs n >= {need} examples in total, got n={n}")
        blocks = self._blocks
        if blocks is None or blocks.device != moments.device:
            blocks = _block_indicator(self._widths, _F64, moments.device)
        h = _linear_hsic_from_moments(n, moments, blocks, self.unbiased)
        return _cka_from_hsic_matrix(h)

    # -- merge / distributed -----------------------------------------------------------------------------------
    def _moments_about(self, shift: Tensor) -> Tensor:
        """Local moments expressed about ``shift`` (a copy when the shifts differ)."""
        assert self._moments is not None and self._shift is not None and self._blocks is not None
        shift = shift.to(self._moments.device, _F64)
        if torch.equal(shift, self._shift):
            return self._moments
        return _reshift(self._moments, self._shift, shift, self._blocks, self.unbiased)

    def merge(self, other: "LinearCKAMatrix") -> "LinearCKAMatrix":
        """Add another accumulator's local states to this one (as if its batches had been fed here). Exact:
        the other's moments are moved to this accumulator's shift first. Returns ``self``."""
        self._check_merge(other)
        if other.unbiased != self.unbiased:
            raise ValueError(f"cannot merge unbiased={other.unbiased} into unbiased={self.unbiased}")
        if other._moments is None:
            return self
        if self._moments is None:
            self._init_states(other._widths, other._shift.clone(), other._moments.device)
            self._moments.copy_(other._moments)
        else:
            if other._widths != self._widths:
                raise ValueError(f"cannot merge widths {other._widths} into an accumulator with widths {self._widths}")
            with torch.no_grad():
                self._moments += other._moments_about(self._shift).to(self._moments.device)
        self._n += other._n
        self._synced = None
        return self

    def sync(self, group: Any = None) -> "LinearCKAMatrix":
        """All-reduce the states over ``group`` so that :meth:`compute` returns the global value on every rank.

        A collective: every rank of the group must call it. Ranks may have seen different numbers of batches, or
        none at all. The states are first moved to a common shift (the first data-holding rank's), then summed
        with one ``all_reduce(SUM)``; works with gloo and NCCL. Local accumulation is untouched: the global states
        are kept aside until the next :meth:`update`, :meth:`unsync`, :meth:`merge` or :meth:`reset`.
        A no-op (returns ``self``) when torch.distributed is not initialised. Returns ``self``.
        """
        self._synced = None
        if not _dist_active():
            return self
        meta = {
            "kind": self._kind,
            "unbiased": self.unbiased,
            "num_layers": self.num_layers,
            "n": self._n,
            "widths": self._widths,
            "shift": None if self._shift is None else self._shift.detach().cpu(),
        }
        metas = _all_gather_meta(meta, group)
        for m in metas:
            if m["kind"] != self._kind or m["unbiased"] != self.unbiased:
                raise ValueError(f"sync(): ranks disagree on the accumulator: {m['kind']}/unbiased={m['unbiased']} "
                                 f"vs {self._kind}/unbiased={self.unbiased}")
        data = [m for m in metas if m["n"] > 0]
        total = sum(m["n"] for m in metas)
        if not data:
            self._synced = (0, None, None)
            return self
        widths = tuple(data[0]["widths"])
        for r, m in enumerate(metas):
            if m["n"] > 0 and tuple(m["widths"]) != widths:
                raise ValueError(f"sync(): rank {r} has widths {tuple(m['widths'])} but another rank has {widths}")
        for r, m in enumerate(metas):
            if m["num_layers"] is not None and m["num_layers"] != len(widths):
                raise ValueError(f"sync(): rank {r} expects {m['num_layers']} representations, the data has "
                                 f"{len(widths)}")
        shift = data[0]["shift"]
        if self._moments is not None:
            device = self._moments.device
            moments = self._moments_about(shift).clone()
        else:
            device = _collective_device(group)
            d = self._dim(widths)
            moments = torch.zeros(d, d, dtype=_F64, device=device)
            self._widths = widths
            if self.num_layers is None:
                self.num_layers = len(widths)
        torch.distributed.all_reduce(moments, op=torch.distributed.ReduceOp.SUM, group=group)
        self._synced = (total, shift.to(device, _F64), moments)
        return self

    # -- serialisation -----------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The local states (copies): ``n``, ``widths``, ``shift`` (F,), ``moments`` (D × D), plus the settings."""
        return {
            "version": _STATE_VERSION,
            "kind": self._kind,
            "unbiased": self.unbiased,
            "num_layers": self.num_layers,
            "names": self.names,
            "n": self._n,
            "widths": self._widths,
            "shift": None if self._shift is None else self._shift.clone(),
            "moments": None if self._moments is None else self._moments.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore states from :meth:`state_dict` (copied, kept on the saved tensors' device; use :meth:`to`).

        Checked before anything changes: the version (1 or 2; version 1 named the flag ``debiased``), the kind,
        every key (ValueError naming a missing one), the flag against this accumulator's ``unbiased``, the number
        of representations, the widths, ``n`` (≥ 1, equal to the moments' count), and the shapes of ``shift``
        (F,) and ``moments`` (D × D). An edited or truncated state is refused, not silently accumulated into."""
        state = _checked_state(state, self._kind, ("num_layers", "n", "widths", "shift", "moments"))
        flag = "unbiased" if state["version"] >= 2 else "debiased"
        if flag not in state:
            raise ValueError(f"state_dict has no {flag!r} entry (version {state['version']})")
        if not isinstance(state[flag], bool) or state[flag] != self.unbiased:
            raise ValueError(f"state_dict has {flag}={state[flag]!r} but this accumulator has unbiased={self.unbiased}")
        num_layers = _state_num_layers(state, self.num_layers)
        names = state.get("names", self.names)
        loaded = None
        if state["moments"] is not None:
            widths = _state_widths(state, num_layers)
            n = _state_int(state, "n", 1)
            d = self._dim(widths)
            moments = _state_tensor(state, "moments", (d, d))
            shift = _state_tensor(state, "shift", (sum(widths),))
            if float(moments[0, 0]) != n:
                raise ValueError(f"state_dict['n'] is {n} but its moments count {float(moments[0, 0]):g} examples")
            loaded = (widths, n, moments, shift)
        elif _state_int(state, "n", 0) != 0 or state["shift"] is not None:
            raise ValueError("state_dict has no moments but a non-zero 'n' or a 'shift': it is incomplete")
        self.reset()
        self.num_layers, self.names = num_layers, names
        if loaded is not None:
            widths, n, moments, shift = loaded
            self._init_states(widths, shift.detach().clone(), moments.device)
            self._moments.copy_(moments)
            self._n = n

    def to(self, device: Union[str, torch.device]) -> "LinearCKAMatrix":
        """Move the states to ``device`` (in place); returns ``self``."""
        if self._moments is not None:
            self._moments = self._moments.to(device)
            self._shift = self._shift.to(device)
            self._blocks = self._blocks.to(device)
        self._synced = None
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_layers={self.num_layers}, unbiased={self.unbiased}, n={self._n}, "
                f"widths={self._widths})")


class LinearCKA(LinearCKAMatrix):
    """Exact streaming linear CKA between two representations X and Y over a whole data set.

    ``update(x, y)`` with x of shape (b, ...) and y of shape (b, ...) (flattened to (b, p), (b, q)); ``compute()``
    gives a 0-d float64 tensor (whatever the input dtype) equal (to ~1e-12 relative) to
    :func:`fastcka.reference.linear_cka` of all the rows stacked — biased, or the debiased CKA with
    ``unbiased=True`` (Kornblith et al.'s feature-space HSIC₁; ``debiased=`` is the deprecated name). 0 for a
    constant representation. See :class:`LinearCKAMatrix` and the module docstring for states and formulas.

    Example (data parallel)::

        metric = LinearCKA(unbiased=True)
        for x, y in loader:                    # each rank its own shard; shards may be unequal or empty
            metric.update(layer1(x), layer2(x))
        value = metric.sync().compute()        # same value on every rank
    """

    _kind = "LinearCKA"

    def __init__(self, *, unbiased: bool = False, **deprecated: Any) -> None:
        super().__init__(2, unbiased=unbiased, names=("x", "y"), **deprecated)

    def update(self, x: Tensor, y: Tensor) -> None:  # type: ignore[override]
        """Add one minibatch of paired rows. ValueError when x or y changes width or their row counts differ."""
        super().update(x, y)

    def compute(self) -> Tensor:
        """0-d float64 CKA(X, Y) of the stream (global after :meth:`sync`). See :meth:`LinearCKAMatrix.compute`."""
        return super().compute()[0, 1]


# ----------------------------------------------------------------------------------------------------------------
# minibatch CKA
# ----------------------------------------------------------------------------------------------------------------


def _sigma_key(sigma: Any, count: Optional[int]) -> Any:
    """A comparable form of a minibatch σ setting: one entry (None or a float) per representation when ``count``
    is known, so that ``2.0`` and ``(2.0, 2.0)`` compare equal and ``(1.0, 3.0)`` differs from ``(3.0, 1.0)``."""
    if isinstance(sigma, Tensor):
        sigma = sigma.tolist()
    if sigma is None or isinstance(sigma, (int, float)):
        one = None if sigma is None else float(sigma)
        return (one,) * count if count else one
    return tuple(None if v is None else float(v) for v in sigma)


class MinibatchCKAMatrix(_Accumulator):
    """Minibatch CKA (Nguyen et al. 2021) between every pair of L representations.

    Every batch adds HSIC₁(K_l, K_m) (unbiased HSIC, Song et al. 2012) for all l ≤ m to an (L × L) float64 sum;
    :meth:`compute` returns Σ_b HSIC₁(K_l,b, K_m,b) / √(Σ_b HSIC₁(K_l,b, K_l,b) · Σ_b HSIC₁(K_m,b, K_m,b)), 0 where
    a self-sum is ≤ 0, in float64 whatever the input dtype. Matches :func:`fastcka.reference.minibatch_cka`. Each
    batch needs ≥ 4 rows. Sums taken with another kernel or σ are refused by :meth:`merge`, :meth:`sync` and
    :meth:`load_state_dict` (ValueError): adding them would blend two different estimators.

    Args:
        num_layers: representations per update (inferred from the first update when ``None``).
        kernel: ``"linear"`` or ``"rbf"``.
        sigma: RBF bandwidth: ``None`` (median heuristic on each batch, Kornblith et al. 2019), one float for all
            representations, or a sequence with one float (or ``None``) per representation.
        names: optional representation names for error messages.
    """

    _kind = "MinibatchCKAMatrix"

    def __init__(
        self,
        num_layers: Optional[int] = None,
        *,
        kernel: str = "linear",
        sigma: Union[None, float, Sequence[Optional[float]]] = None,
        names: Optional[Sequence[str]] = None,
    ) -> None:
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
        if sigma is not None and kernel == "linear":
            raise ValueError("sigma is only used with kernel='rbf'")
        self.kernel = kernel
        self.sigma = sigma
        super().__init__(num_layers, names)

    def reset(self) -> None:
        """Forget every state (and any synced view)."""
        self._widths: Optional[Tuple[int, ...]] = None
        self._n: int = 0
        self._batches: int = 0
        self._hsic: Optional[Tensor] = None
        self._synced: Optional[Tuple[int, Optional[Tensor]]] = None

    @property
    def n(self) -> int:
        """Examples accumulated locally."""
        return self._n

    @property
    def batches(self) -> int:
        """Batches accumulated locally."""
        return self._batches

    def _sigma_of(self, i: int) -> Optional[float]:
        s = self.sigma
        if s is None or isinstance(s, (int, float)):
            return s
        if isinstance(s, Tensor) and s.dim() == 0:
            return float(s)
        s = list(s)
        if len(s) != len(self._widths):
            raise ValueError(f"sigma has {len(s)} entries but there are {len(self._widths)} representations")
        return s[i]

    def update(self, *reps: Tensor) -> None:
        """Add one minibatch (≥ 4 rows): ``update(x0, ..., x_{L-1})`` or one list of them."""
        if len(reps) == 1 and isinstance(reps[0], (list, tuple)):
            reps = tuple(reps[0])
        mats = self._prepare(reps)
        b = mats[0].shape[0]
        if b == 0:
            return
        if b < 4:
            raise ValueError(f"minibatch CKA needs at least 4 examples per batch (unbiased HSIC), got a batch of {b}")
        nl = len(mats)
        if self._hsic is None:
            self._widths = tuple(m.shape[1] for m in mats)
            if self.num_layers is None:
                self.num_layers = nl
            self._hsic = torch.zeros(nl, nl, dtype=_F64, device=mats[0].device)
        with torch.no_grad():
            rows, cols, vals = [], [], []
            diag: List[Optional[Tensor]] = [None] * nl
            for i in range(nl):
                for j in range(i + 1, nl):
                    t = _hsic1_terms(mats[i], mats[j], self.kernel, self._sigma_of(i), self._sigma_of(j))
                    vals.append(t[0])
                    rows.append(i)
                    cols.append(j)
                    if diag[i] is None:
                        diag[i] = t[1]
                    if diag[j] is None:
                        diag[j] = t[2]
            for i in range(nl):
                if diag[i] is None:  # a single representation: its self-HSIC alone
                    diag[i] = _hsic1_terms(mats[i], mats[i], self.kernel, self._sigma_of(i), self._sigma_of(i))[0]
                vals.append(diag[i])
                rows.append(i)
                cols.append(i)
            v = torch.stack(vals).to(self._hsic.device)
            r = torch.tensor(rows, device=self._hsic.device)
            c = torch.tensor(cols, device=self._hsic.device)
            self._hsic.index_put_((r, c), v, accumulate=True)
            off = r != c
            self._hsic.index_put_((c[off], r[off]), v[off], accumulate=True)
        self._n += b
        self._batches += 1
        self._synced = None

    def compute(self) -> Tensor:
        """(L × L) float64 minibatch CKA (global after :meth:`sync`). RuntimeError before any batch."""
        if self._synced is not None:
            batches, h = self._synced
        else:
            batches, h = self._batches, self._hsic
        if batches == 0 or h is None:
            where = "on any rank" if self._synced is not None else "yet"
            raise RuntimeError(f"{type(self).__name__}.compute() called before any data: no batch was seen {where}; "
                               "call update() first")
        return _cka_from_hsic_matrix(h)

    def _sigma_count(self, widths: Optional[Sequence[int]] = None) -> Optional[int]:
        w = widths if widths is not None else self._widths
        return len(w) if w is not None else self.num_layers

    def _check_sigma_matches(self, other_sigma: Any, where: str, widths: Optional[Sequence[int]] = None) -> None:
        count = self._sigma_count(widths)
        if _sigma_key(other_sigma, count) != _sigma_key(self.sigma, count):
            raise ValueError(f"{where} has sigma={other_sigma!r} but this accumulator has sigma={self.sigma!r}: "
                             "minibatch HSIC sums taken with different bandwidths do not add up to one estimator")

    def merge(self, other: "MinibatchCKAMatrix") -> "MinibatchCKAMatrix":
        """Add another accumulator's HSIC₁ sums (same kernel, σ and widths; ValueError otherwise). Returns
        ``self``."""
        self._check_merge(other)
        if other.kernel != self.kernel:
            raise ValueError(f"cannot merge kernel={other.kernel!r} into kernel={self.kernel!r}")
        self._check_sigma_matches(other.sigma, "the merged accumulator", other._widths)
        if other._hsic is None:
            return self
        if self._hsic is None:
            self._widths = other._widths
            self.num_layers = self.num_layers or other.num_layers
            self._hsic = other._hsic.clone()
        else:
            if other._widths != self._widths:
                raise ValueError(f"cannot merge widths {other._widths} into an accumulator with widths {self._widths}")
            self._hsic += other._hsic.to(self._hsic.device)
        self._n += other._n
        self._batches += other._batches
        self._synced = None
        return self

    def sync(self, group: Any = None) -> "MinibatchCKAMatrix":
        """All-reduce (SUM) the HSIC₁ sums over ``group``; see :meth:`LinearCKAMatrix.sync` (same semantics)."""
        self._synced = None
        if not _dist_active():
            return self
        meta = {"kind": self._kind, "kernel": self.kernel, "sigma": _sigma_key(self.sigma, None), "n": self._n,
                "batches": self._batches, "widths": self._widths}
        metas = _all_gather_meta(meta, group)
        data = [m for m in metas if m["batches"] > 0]
        for r, m in enumerate(metas):
            if m["kind"] != self._kind or m["kernel"] != self.kernel:
                raise ValueError(f"sync(): rank {r} has {m['kind']}/kernel={m['kernel']!r}, this rank "
                                 f"{self._kind}/kernel={self.kernel!r}")
            self._check_sigma_matches(m["sigma"], f"sync(): rank {r}", m["widths"])
        if not data:
            self._synced = (0, None)
            return self
        widths = tuple(data[0]["widths"])
        for r, m in enumerate(data):
            if tuple(m["widths"]) != widths:
                raise ValueError(f"sync(): ranks disagree on the widths: {tuple(m['widths'])} vs {widths}")
        if self._hsic is not None:
            h = self._hsic.clone()
        else:
            h = torch.zeros(len(widths), len(widths), dtype=_F64, device=_collective_device(group))
        torch.distributed.all_reduce(h, op=torch.distributed.ReduceOp.SUM, group=group)
        self._synced = (sum(m["batches"] for m in metas), h)
        return self

    def state_dict(self) -> Dict[str, Any]:
        """Local states (copies) and settings."""
        return {
            "version": _STATE_VERSION,
            "kind": self._kind,
            "kernel": self.kernel,
            "sigma": self.sigma,
            "num_layers": self.num_layers,
            "names": self.names,
            "n": self._n,
            "batches": self._batches,
            "widths": self._widths,
            "hsic": None if self._hsic is None else self._hsic.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore states from :meth:`state_dict`. Checked before anything changes: version, kind, every key
        (ValueError naming a missing one), kernel and σ against this accumulator's, the number of representations,
        the widths, ``n`` and ``batches`` (ints ≥ 0, both 0 without sums) and the (L × L) shape of the sums."""
        state = _checked_state(state, self._kind, ("kernel", "sigma", "num_layers", "n", "batches", "widths", "hsic"))
        if state["kernel"] != self.kernel:
            raise ValueError(f"state_dict has kernel={state['kernel']!r} but this accumulator has {self.kernel!r}")
        num_layers = _state_num_layers(state, self.num_layers)
        n, batches = _state_int(state, "n", 0), _state_int(state, "batches", 0)
        widths, hsic = None, None
        if state["hsic"] is not None:
            widths = _state_widths(state, num_layers)
            hsic = _state_tensor(state, "hsic", (len(widths), len(widths)))
            if batches < 1 or n < 4 * batches:
                raise ValueError(f"state_dict has sums but batches={batches}, n={n} (each batch has at least 4 rows)")
        elif n or batches:
            raise ValueError("state_dict has no sums ('hsic' is None) but a non-zero 'n' or 'batches'")
        self._check_sigma_matches(state["sigma"], "state_dict", widths)
        self.reset()
        self.num_layers = num_layers
        self.names = state.get("names", self.names)
        self._n, self._batches, self._widths = n, batches, widths
        self._hsic = None if hsic is None else hsic.detach().to(_F64).clone()

    def to(self, device: Union[str, torch.device]) -> "MinibatchCKAMatrix":
        """Move the states to ``device``; returns ``self``."""
        if self._hsic is not None:
            self._hsic = self._hsic.to(device)
        self._synced = None
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_layers={self.num_layers}, kernel={self.kernel!r}, "
                f"batches={self._batches}, n={self._n})")


class MinibatchCKA(MinibatchCKAMatrix):
    """Minibatch CKA (Nguyen et al. 2021) of two representations: ``update(x, y)`` per batch (≥ 4 rows),
    ``compute()`` → 0-d float64 Σ HSIC₁(K,L) / √(Σ HSIC₁(K,K) Σ HSIC₁(L,L)). ``sigma`` for the RBF kernel: ``None``
    (per-batch median heuristic), a float, or ``(sigma_x, sigma_y)``. See :class:`MinibatchCKAMatrix`."""

    _kind = "MinibatchCKA"

    def __init__(self, *, kernel: str = "linear",
                 sigma: Union[None, float, Tuple[Optional[float], Optional[float]]] = None) -> None:
        super().__init__(2, kernel=kernel, sigma=sigma, names=("x", "y"))

    def update(self, x: Tensor, y: Tensor) -> None:  # type: ignore[override]
        """Add one minibatch of paired rows (at least 4)."""
        super().update(x, y)

    def compute(self) -> Tensor:
        """0-d float64 minibatch CKA (global after :meth:`sync`)."""
        return super().compute()[0, 1]
