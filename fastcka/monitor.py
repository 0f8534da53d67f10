"""CKA during training, with no host sync on the step path.

:class:`CKAMonitor` hooks named layers of a model, and every ``every`` steps computes the CKA between pairs of them
(by default consecutive layers) with fastcka's ops, on the model's device. The values go into a preallocated device
buffer; nothing on the step path reads a value back to the host (no ``.item()``, ``.cpu()``, ``.tolist()``,
``bool(tensor)`` or printing), so a CUDA training loop keeps running ahead of the GPU. Every ``flush_every`` steps
one transfer moves the buffered values to the host and hands them to the loggers.

Plain loop::

    probe = x_train[:2000]                      # a fixed batch: the numbers are comparable across steps
    with CKAMonitor(model, ["blocks.*"], probe=probe, every=10, logger=SummaryWriter("runs/a")) as mon:
        for batch in loader:
            loss = model(batch).loss
            loss.backward(); opt.step(); opt.zero_grad()
            mon.step()
    mon.history                                 # {"step": [...], "cka/blocks.0/blocks.1": [...]} when kept

What is measured
----------------
* ``probe`` given: the probe batch runs through the model under ``torch.no_grad()`` (in eval mode by default, so
  dropout and batch-norm statistics stay out of it) every ``every`` steps, after the optimizer step. Tensors go as
  ``model(probe)``, tuples and lists as ``model(*probe)``, mappings (dicts, Hugging Face ``BatchEncoding``) as
  ``model(**probe)``, and a callable as ``probe(model)``. The probe is moved to the model's device once.
  The forward is cut short once every hooked layer has fired (``stop_early``).
* ``probe=None``: the activations of the training forward the model just ran (the last forward in training mode
  before ``step()``) are used, so the measurement costs only the CKA itself. ``batch_rows`` (a LongTensor of row
  indices) keeps only those examples of each batch: with full-batch training this makes a fixed probe subset of
  the training set free, measured on the weights of the forward pass (one optimizer step before ``step()``).

Layer outputs
-------------
The activations come from :class:`fastcka.capture.Capture` (shared with :func:`fastcka.compare`; its module doc
has the details). A tuple or list output gives its first tensor, a ``ModelOutput`` (or any mapping) its
``last_hidden_state`` if it has one, else its first tensor value. (n,) and (n, d) outputs are used as they are;
(n, T, d) token outputs give the token at ``position`` (an int, default -1: the last; or a LongTensor (n,) with one
position per example), unless ``reduce`` ("mean", "max" over the tokens, "flatten": all tokens as features)
replaces the position pick; (n, C, H, W) maps are flattened, or pooled over the spatial dims with ``reduce="mean"``
/ ``"max"``; a callable ``reduce`` maps the raw output tensor to (n, ...). Activations are detached copies.

**A module called more than once in one forward is measured at its first call** (later calls in that forward are
ignored), with and without ``stop_early``. With ``probe=None`` and several training forwards before ``step()``,
each call of the model itself starts a new capture, so the last forward counts (code that calls submodules directly,
never the model, keeps the first call since the last ``step()``).

Loggers
-------
``logger`` is a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``), a path ending in
``.csv`` or a :class:`CSVLogger`, any callable ``(step, {name: float})``, or a list of these. Metric names are
``"{prefix}/{layer_a}/{layer_b}"`` (prefix "cka"). With no logger the values are kept in ``history`` (set
``keep_history`` to choose).
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .capture import Capture, add_note, check_reduce, describe, model_device, resolve_layers, to_device

Tensor = torch.Tensor

__all__ = ["CKAMonitor", "CSVLogger", "tensorboard_logger", "resolve_layers"]



# ---------------------------------------------------------------------------------------------------------------
# The one indirection to the CKA math (fastcka's ops; never written here).
# ---------------------------------------------------------------------------------------------------------------

def _cka(x: Tensor, y: Tensor, kernel: str, unbiased: bool, **kernel_args: Any) -> Tensor:
    """0-d CKA tensor on x's device, no host sync (RBF: with σ given): ``fastcka.cka``."""
    import fastcka

    return fastcka.cka(x, y, kernel=kernel, unbiased=unbiased, **kernel_args)


def _cka_matrix(xs: Sequence[Tensor], kernel: str, unbiased: bool, **kernel_args: Any) -> Tensor:
    """(L, L) CKA matrix on the device: ``fastcka.cka_matrix``."""
    import fastcka

    return fastcka.cka_matrix(list(xs), kernel=kernel, unbiased=unbiased, **kernel_args)


# ---------------------------------------------------------------------------------------------------------------
# Loggers
# ---------------------------------------------------------------------------------------------------------------

class CSVLogger:
    """Appends one row per measured step to a CSV file: ``step`` then one column per metric (wide format).

    The file is opened per flush (append mode), so a resumed run adds to the same file; an existing header is kept.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"]):
        self.path = os.fspath(path)
        self._fields: Optional[List[str]] = None

    def __call__(self, step: int, metrics: Dict[str, float]) -> None:
        self.write([(step, metrics)])

    def write(self, rows: Sequence[Tuple[int, Dict[str, float]]]) -> None:
        if not rows:
            return
        if self._fields is None:
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                with open(self.path, newline="") as f:
                    header = next(csv.reader(f), None)
                self._fields = list(header) if header else None
            new = self._fields is None
            if new:
                keys: List[str] = []
                for _, m in rows:
                    keys.extend(k for k in m if k not in keys)
                self._fields = ["step"] + keys
                d = os.path.dirname(self.path)
                if d:
                    os.makedirs(d, exist_ok=True)
                with open(self.path, "w", newline="") as f:
                    csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore", restval="")
            for step, m in rows:
                w.writerow({"step": step, **m})

    def __repr__(self) -> str:
        return f"CSVLogger({self.path!r})"


def tensorboard_logger(log_dir: Optional[str] = None, **kwargs: Any):
    """A ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package: ``pip install
    fastcka[tensorboard]``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TensorBoard logging needs the tensorboard package: pip install fastcka[tensorboard]"
        ) from e
    return SummaryWriter(log_dir=log_dir, **kwargs)


class _TBSink:
    def __init__(self, writer: Any):
        self.writer = writer

    def write(self, rows: Sequence[Tuple[int, Dict[str, float]]]) -> None:
        for step, m in rows:
            for k, v in m.items():
                self.writer.add_scalar(k, v, step)
        fl = getattr(self.writer, "flush", None)
        if callable(fl):
            fl()


class _CallableSink:
    def __init__(self, fn: Callable[[int, Dict[str, float]], Any]):
        self.fn = fn

    def write(self, rows: Sequence[Tuple[int, Dict[str, float]]]) -> None:
        for step, m in rows:
            self.fn(step, m)


def _make_sinks(logger: Any) -> List[Any]:
    if logger is None:
        return []
    if isinstance(logger, (list, tuple)):
        return [s for lg in logger for s in _make_sinks(lg)]
    if isinstance(logger, CSVLogger):
        return [logger]
    if isinstance(logger, (str, os.PathLike)):
        path = os.fspath(logger)
        if path.endswith(".csv"):
            return [CSVLogger(path)]
        raise ValueError(
            f"logger: a path must end in '.csv' (got {path!r}); for TensorBoard pass a SummaryWriter "
            "(fastcka.monitor.tensorboard_logger(log_dir))"
        )
    if callable(getattr(logger, "add_scalar", None)):
        return [_TBSink(logger)]
    if callable(logger):
        return [_CallableSink(logger)]
    raise TypeError(
        "logger must be None, a SummaryWriter (anything with add_scalar), a '.csv' path or CSVLogger, a callable "
        f"(step, dict), or a list of these; got {type(logger).__name__}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

def _dist_rank() -> int:
    """This process's rank under an initialised torch.distributed group, else 0."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_monitor_kwargs(kwargs: Dict[str, Any], reserved: Sequence[str]) -> None:
    """For callbacks that forward ``**monitor_kwargs`` to :class:`CKAMonitor`: a TypeError now (not when training
    starts) for a keyword the monitor does not take, or one the callback sets itself."""
    import inspect

    params = inspect.signature(CKAMonitor.__init__).parameters
    for k in kwargs:
        if k in reserved:
            raise TypeError(f"{k!r} is set by the callback itself; do not pass it")
        if k not in params or k == "self":
            close = difflib.get_close_matches(k, [p for p in params if p != "self"], n=3)
            raise TypeError(f"unexpected keyword {k!r} for CKAMonitor" + (f"; did you mean {close}?" if close else ""))


def _gate(ref: "weakref.ref[CKAMonitor]") -> Callable[[nn.Module], bool]:
    """The Capture's ``when``: capture during the monitor's probe forwards, and training-mode forwards when the
    next step is measured without a probe. Holds the monitor weakly."""

    def when(module: nn.Module) -> bool:
        mon = ref()
        if mon is None:
            return False
        if mon._in_probe:
            return True
        if mon._armed and mon.probe is None and mon.model.training:
            if getattr(module, "_is_replica", False):  # nn.DataParallel: each replica sees one chunk
                raise RuntimeError("CKAMonitor with probe=None cannot watch an nn.DataParallel model: every "
                                   "replica would overwrite the captured batch with its own chunk; pass a "
                                   "probe, or use DistributedDataParallel")
            return True
        return False

    return when


# ---------------------------------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------------------------------

class CKAMonitor:
    """Hooks ``layers`` of ``model`` and logs the CKA between pairs of them during training (see the module doc).

    Args:
        model: the module to watch (names are relative to it).
        layers: module names or glob patterns (``"blocks.*"``: ``*`` stays within a dotted segment, ``**`` crosses
            segments), resolved in the given order.
        pairs: which CKAs: None (consecutive layers), ``"all"`` (every pair i < j), or a list of (a, b) with layer
            names or indices into the resolved layers. :meth:`matrix` gives the full matrix on request.
        every: measure on steps where ``step % every == 0`` (the first ``step()`` is step 1).
        probe: a fixed batch run under ``no_grad`` at each measured step, or None to use the training batch.
        position: token position for (n, T, d) outputs (int, or a LongTensor (n,) of per-example positions).
        reduce: None, "mean", "max", "flatten" or a callable (see the module doc); replaces ``position``.
        logger: SummaryWriter, ".csv" path / CSVLogger, callable ``(step, dict)``, a list of them, or None.
        flush_every: read the buffered values back and log them on steps where ``step % flush_every == 0``.
        kernel, unbiased, sigma, threshold: passed to ``fastcka.cka``. With ``kernel="rbf"`` and ``sigma=None`` each
            measurement takes the exact median heuristic, which reads a few counts back to the host on CUDA; pass
            ``sigma`` (a float, or a pair) to keep the step path free of host syncs.
        batch_rows: with ``probe=None``, keep only these rows (example indices) of each training batch.
        probe_eval: run the probe with every module in eval mode (restored afterwards).
        stop_early: end the probe forward as soon as every hooked layer has fired. Either way a module called more
            than once in one forward is measured at its first call (see "Layer outputs" in the module doc).
        keep_history: keep the flushed values in ``history`` (default: only when no logger is given).
        prefix: metric-name prefix.
        rank_zero_only: under ``torch.distributed``, only rank 0 reads the values back and logs them (the other
            ranks still compute, so collectives in the model stay matched).

    The step path (``step()`` on non-flush steps, and the hooks) makes no host sync. Use it as a context manager or
    call :meth:`close` to flush and remove the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Union[str, Sequence[str]],
        pairs: Union[None, str, Sequence[Tuple[Union[str, int], Union[str, int]]]] = None,
        every: int = 1,
        probe: Any = None,
        position: Union[int, Tensor] = -1,
        reduce: Union[None, str, Callable[[Tensor], Tensor]] = None,
        logger: Any = None,
        flush_every: int = 100,
        *,
        kernel: str = "linear",
        unbiased: bool = False,
        sigma: Any = None,
        threshold: float = 1.0,
        batch_rows: Optional[Tensor] = None,
        probe_eval: bool = True,
        stop_early: bool = True,
        keep_history: Optional[bool] = None,
        prefix: str = "cka",
        rank_zero_only: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not isinstance(flush_every, int) or isinstance(flush_every, bool) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive int, got {flush_every!r}")
        if not isinstance(position, (int, torch.Tensor)) or isinstance(position, bool):
            raise TypeError(f"position must be an int or a 1-D integer tensor, got {type(position).__name__}")
        check_reduce(position, "position")
        if kernel not in ("linear", "rbf"):  # here, not at the first measured step (maybe thousands of steps in)
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
        if kernel == "linear" and sigma is not None:
            raise ValueError("sigma is the RBF kernel's bandwidth: it needs kernel='rbf'")
        if reduce is not None and not callable(reduce) and not isinstance(reduce, str):
            raise TypeError(f"reduce must be None, 'mean', 'max', 'flatten' or a callable (a token index goes in "
                            f"position=), got {type(reduce).__name__}")
        check_reduce(reduce)
        if batch_rows is not None:
            if probe is not None:
                raise ValueError("batch_rows selects rows of the training batch: it needs probe=None")
            if not isinstance(batch_rows, torch.Tensor) or batch_rows.dim() != 1 or batch_rows.is_floating_point():
                raise ValueError(f"batch_rows must be a 1-D integer tensor of row indices, got {describe(batch_rows)}")

        self.model = model
        self.layers: List[str] = resolve_layers(model, layers)
        self.pairs: List[Tuple[str, str]] = self._resolve_pairs(pairs)
        self.every = every
        self.flush_every = flush_every
        self.probe = probe
        self.position = position
        self.reduce = reduce
        self.kernel = kernel
        self.unbiased = bool(unbiased)
        self._kernel_args = {} if kernel == "linear" else {"sigma": sigma, "threshold": threshold}
        self.batch_rows = batch_rows
        self.probe_eval = probe_eval
        self.stop_early = stop_early
        self.prefix = prefix
        self.names: List[str] = [f"{prefix}/{a}/{b}" for a, b in self.pairs]
        self._sinks = _make_sinks(logger)
        self.keep_history = (not self._sinks) if keep_history is None else bool(keep_history)
        self.history: Dict[str, List[float]] = {"step": [], **{nm: [] for nm in self.names}}

        idx = {nm: i for i, nm in enumerate(self.layers)}
        self._pair_idx = [(idx[a], idx[b]) for a, b in self.pairs]
        self._use_matrix = pairs == "all"
        self._step = 0
        self._in_probe = False
        self._armed = (1 % every) == 0
        self._buffer: Optional[Tensor] = None
        self._rows = 0
        self._row_steps: List[int] = []
        self._restored: List[Tuple[int, List[float]]] = []
        self._last: Optional[Tensor] = None
        self._device_cache: Dict[str, Any] = {}
        # ranks other than zero compute but never read or log (the integrations set it from their trainer)
        self._discard = bool(rank_zero_only) and _dist_rank() > 0
        self._closed = False
        # The activations come from one Capture (fastcka.capture: output kinds, reduce, copies, first call of a
        # module per forward). Its hooks hold it weakly and its gate holds the monitor weakly, so a monitor that is
        # dropped without close() (a notebook cell run again) takes its hooks with it.
        self._capture = Capture(model, self.layers, reduce=position if reduce is None else reduce, rows=batch_rows,
                                when=_gate(weakref.ref(self)))

    # -- setup ---------------------------------------------------------------------------------------------------
    def _resolve_pairs(self, pairs: Any) -> List[Tuple[str, str]]:
        L = self.layers
        if pairs is None:
            if len(L) < 2:
                raise ValueError(
                    f"layers resolved to {L}: consecutive-layer CKA needs at least two layers (or pass pairs)"
                )
            return [(L[i], L[i + 1]) for i in range(len(L) - 1)]
        if isinstance(pairs, str):
            if pairs != "all":
                raise ValueError(f"pairs must be None, 'all' or a list of (a, b), got {pairs!r}")
            if len(L) < 2:
                raise ValueError(f"layers resolved to {L}: pairs='all' needs at least two layers")
            return [(L[i], L[j]) for i in range(len(L)) for j in range(i + 1, len(L))]
        out = []
        for pr in pairs:
            if not isinstance(pr, (tuple, list)) or len(pr) != 2:
                raise ValueError(f"pairs must hold (a, b) pairs of layer names or indices, got {pr!r}")
            ab = []
            for v in pr:
                if isinstance(v, int) and not isinstance(v, bool):
                    if not -len(L) <= v < len(L):
                        raise ValueError(f"pairs: index {v} out of range for the {len(L)} resolved layers {L}")
                    ab.append(L[v])
                elif isinstance(v, str):
                    if v not in L:
                        close = difflib.get_close_matches(v, L, n=5, cutoff=0.5)
                        raise ValueError(
                            f"pairs: {v!r} is not one of the monitored layers {L}"
                            + (f"; close names: {close}" if close else "")
                        )
                    ab.append(v)
                else:
                    raise TypeError(f"pairs: entries must be layer names or indices, got {type(v).__name__}")
            out.append((ab[0], ab[1]))
        if not out:
            raise ValueError("pairs is empty")
        return out

    def _cached(self, key: str, value: Any, device: torch.device) -> Any:
        hit = self._device_cache.get(key)
        if hit is not None and hit[0] == device:
            return hit[1]
        moved = to_device(value, device)
        self._device_cache[key] = (device, moved)
        return moved

    # -- the step path (no host sync) ----------------------------------------------------------------------------
    def step(self, step: Optional[int] = None) -> None:
        """Call once per optimizer step (after it). Measures on steps where ``step % every == 0`` and flushes on
        steps where ``step % flush_every == 0``. ``step`` sets the global step (integrations pass theirs)."""
        if self._closed:
            raise RuntimeError("CKAMonitor.step() after close(): the hooks are gone")
        prev = self._step
        self._step = self._step + 1 if step is None else int(step)
        s, armed = self._step, self._armed
        try:
            if s % self.every == 0:
                self._measure(s, armed)
        finally:
            self._capture.clear()
            self._arm_after(s, prev)
        if s % self.flush_every == 0:
            self.flush()

    def measure(self, step: Optional[int] = None) -> None:
        """Measure now on the probe (e.g. at step 0, before training), recorded at ``step`` (default: the current
        step count); no host sync, logged at the next flush. Needs a probe."""
        if self._closed:
            raise RuntimeError("CKAMonitor.measure() after close(): the hooks are gone")
        if self.probe is None:
            raise ValueError("measure() runs the probe: this monitor has probe=None (it measures in step())")
        s = self._step if step is None else int(step)
        self._write(s, self._compute(self._run_probe(self.probe, s)))

    def _arm_after(self, s: int, prev: int) -> None:
        """With probe=None, capture the next training forward if the next step may be measured: s + 1, or s plus the
        last stride (a trainer whose step counts two optimizers moves by 2)."""
        stride = max(1, s - prev)
        self._armed = (s + 1) % self.every == 0 or (s + stride) % self.every == 0

    def _resume_at(self, step: int) -> None:
        """Continue from a trainer's step (a resumed run)."""
        self._step = int(step)
        self._armed = (self._step + 1) % self.every == 0

    def _measure(self, s: int, armed: bool = True) -> None:
        if self.probe is not None:
            acts = self._run_probe(self.probe, s)
        else:
            acts = self._capture.activations
            missing = self._capture.missing()
            if missing and not armed:  # the step jumped past the one the capture was armed for: skip, do not crash
                warnings.warn(f"CKAMonitor (probe=None): step {s} came after a jump in the step count, so its training "
                              "forward was not captured and it is not measured; pass a probe to measure on any step",
                              RuntimeWarning, stacklevel=3)
                return
            if missing:
                raise RuntimeError(
                    f"CKAMonitor (step {s}, probe=None): no training-mode forward reached layers {missing} since "
                    "the last step(); call step() after the training forward/backward/optimizer step, or pass a probe"
                )
        values = self._compute(acts)
        self._write(s, values)

    def _run_probe(self, probe: Any, s: Optional[int]) -> Dict[str, Tensor]:
        model = self.model
        call = callable(probe) and not isinstance(probe, (torch.Tensor, nn.Module))
        batch = probe if call else self._cached("probe" if probe is self.probe else "probe_once", probe,
                                                model_device(model))
        modes = [(m, m.training) for m in model.modules()] if self.probe_eval else []
        cap = self._capture
        self._in_probe = True
        cap.stop_early, cap.rows = self.stop_early, None
        try:
            for m, _ in modes:
                m.training = False
            with torch.no_grad():
                acts = cap.run(probe, model) if call else cap.run(model, batch)
        except Exception as e:
            where = f" at step {s}" if s is not None else ""
            add_note(
                e,
                f"fastcka.CKAMonitor: this error came from {type(model).__name__}'s forward on the monitor's probe"
                f"{where} (probe: {describe(probe)}). The probe must be a batch the model accepts: a tensor is "
                "passed as model(probe), a tuple/list as model(*probe), a mapping as model(**probe).",
            )
            raise
        finally:
            self._in_probe = False
            cap.stop_early, cap.rows = False, self.batch_rows
            cap.clear()
            for m, tr in modes:
                m.training = tr
        missing = [nm for nm in self.layers if nm not in acts]
        if missing:
            raise RuntimeError(
                f"CKAMonitor: the probe forward of {type(model).__name__} never ran layers {missing}; "
                "monitor layers that the forward pass uses"
            )
        return acts

    def _compute(self, acts: Dict[str, Tensor]) -> Tensor:
        feats = [acts[nm] for nm in self.layers]
        rows = {nm: f.shape[0] if f.dim() else None for nm, f in zip(self.layers, feats)}
        if len(set(rows.values())) > 1:
            raise ValueError(f"CKAMonitor: the monitored layers gave different numbers of examples (first dim): {rows}; "
                             "CKA pairs example i of one layer with example i of the other (use reduce= or position= "
                             "to map per-token outputs to one row per example)")
        if self._use_matrix:
            m = _cka_matrix(feats, self.kernel, self.unbiased, **self._kernel_args)
            ii, jj = self._cached("triu", (torch.tensor([i for i, _ in self._pair_idx]),
                                          torch.tensor([j for _, j in self._pair_idx])), m.device)
            return m[ii, jj]
        return torch.stack([_cka(feats[i], feats[j], self.kernel, self.unbiased, **self._kernel_args)
                            for i, j in self._pair_idx])

    def _write(self, s: int, values: Tensor) -> None:
        buf = self._buffer
        if buf is None or buf.device != values.device:
            cap = math.ceil(self.flush_every / self.every) + 1
            self._buffer = buf = torch.empty(cap, values.numel(), dtype=values.dtype, device=values.device)
            self._rows = 0
            self._row_steps = []
        elif self._rows == buf.shape[0]:  # irregular step numbers: grow, never sync
            self._buffer = buf = torch.cat([buf, torch.empty_like(buf)])
        buf[self._rows].copy_(values)
        self._rows += 1
        self._row_steps.append(s)
        self._last = values

    # -- reading and logging -------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or an exception left the ``with`` block): the hooks are gone."""
        return self._closed

    @property
    def step_count(self) -> int:
        """The last step given to :meth:`step`."""
        return self._step

    @property
    def last(self) -> Optional[Tensor]:
        """The latest measured values, a (len(names),) tensor on the model's device (no sync), or None."""
        return self._last

    def _pending(self) -> List[Tuple[int, List[float]]]:
        """Everything not yet flushed, read to the host with one transfer."""
        rows = list(self._restored)
        if self._rows:
            host = self._buffer[: self._rows].to("cpu", torch.float64)
            rows.extend(zip(self._row_steps, host.tolist()))
        return rows

    def _clear_pending(self) -> None:
        self._restored = []
        self._rows = 0
        self._row_steps = []

    def flush(self) -> None:
        """Move the buffered values to the host (one transfer) and hand them to the loggers (and ``history``)."""
        if self._discard:
            self._clear_pending()
            return
        if not self._rows and not self._restored:
            return
        rows = self._pending()
        self._clear_pending()
        records = [(step, dict(zip(self.names, vals))) for step, vals in rows]
        if self.keep_history:
            for step, vals in rows:
                self.history["step"].append(step)
                for nm, v in zip(self.names, vals):
                    self.history[nm].append(v)
        for sink in self._sinks:
            sink.write(records)

    def matrix(self, probe: Any = None) -> Tensor:
        """The full (L, L) CKA matrix over the monitored layers, on the device (no sync), from a no_grad forward on
        ``probe`` (default: the monitor's probe)."""
        probe = self.probe if probe is None else probe
        if probe is None:
            raise ValueError("matrix() runs a probe forward: pass a probe (the monitor has none)")
        sigma = self._kernel_args.get("sigma")
        if isinstance(sigma, (tuple, list)):
            raise ValueError(f"matrix() needs one sigma for every layer; this monitor has sigma={tuple(sigma)} (a pair "
                             "for (a, b) pairs): pass one float, or call fastcka.cka_matrix on the activations")
        acts = self._run_probe(probe, None)
        self._device_cache.pop("probe_once", None)
        return _cka_matrix([acts[nm] for nm in self.layers], self.kernel, self.unbiased, **self._kernel_args)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def remove_hooks(self) -> None:
        """Remove the forward hooks (idempotent); :meth:`close` also flushes."""
        self._capture.remove()

    def close(self) -> None:
        """Flush what is pending and remove the hooks (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self.remove_hooks()
            self._closed = True

    def __enter__(self) -> "CKAMonitor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was measured, but never mask the original error
            self.flush()
        except Exception:
            pass
        self.remove_hooks()
        self._closed = True

    # -- checkpointing -------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The series state: the step counter, the values not yet flushed (read to the host here) and ``history``.
        No logger is called: a run resumed from this state logs the pending values at its next flush."""
        return {
            "version": 1,
            "step": self._step,
            "names": list(self.names),
            "pending": [(s, list(v)) for s, v in ([] if self._discard else self._pending())],
            "history": {k: list(v) for k, v in self.history.items()} if self.keep_history else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue the series saved by :meth:`state_dict` (same pairs required)."""
        if list(state.get("names", [])) != self.names:
            raise ValueError(
                f"load_state_dict: the saved monitor measured {state.get('names')}, this one measures {self.names}"
            )
        self._resume_at(int(state["step"]))
        self._rows = 0
        self._row_steps = []
        self._restored = [(int(s), [float(x) for x in v]) for s, v in state.get("pending", [])]
        hist = state.get("history")
        if hist is not None and self.keep_history:
            self.history = {k: list(v) for k, v in hist.items()}

    def __repr__(self) -> str:
        mode = "probe" if self.probe is not None else "training batch"
        return (
            f"CKAMonitor({type(self.model).__name__}, layers={self.layers}, pairs={len(self.pairs)}, every={self.every}, "
            f"{mode}, flush_every={self.flush_every}, step={self._step})"
        )
