"""Hugging Face ``Trainer`` callback: :class:`fastcka.CKAMonitor` inside ``Trainer.train`` (``pip install fastcka[hf]``).

::

    from fastcka.integrations.hf import CKATrainerCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    CKATrainerCallback(["transformer.h.*"], probe={"input_ids": probe_ids}, every=10, trainer=trainer)
    trainer.train()

* The monitor hooks the model's submodules at ``on_train_begin`` (names relative to the model the Trainer holds)
  and is stepped in ``on_step_end`` with ``state.global_step``, i.e. once per optimizer step.
* Values are buffered on the device. At each of the Trainer's logging steps (``on_log``) they are read back in one
  transfer, and the latest value of each metric is added to the Trainer's log record of that step: to the ``logs``
  the logging callbacks receive and to ``trainer.state.log_history``. Measurements between logging steps (with
  ``every`` smaller than ``logging_steps``) go, one entry per measured step, to the optional ``logger`` of the
  monitor (SummaryWriter, CSV, callable) and to ``callback.monitor.history`` when ``keep_history=True``.
* Order matters for the reporting integrations (TensorBoard, W&B, ...): the Trainer calls callbacks in order and
  its reporting callbacks come first. Pass ``trainer=`` and the callback installs itself right after the
  Trainer's flow callback, ahead of them, so they log the CKA too. Passed in ``callbacks=[...]`` or through
  ``add_callback`` instead, the values still reach ``state.log_history`` and any callback placed after it.
* Distributed: every process runs the same hooks and probe forwards; only the world process zero reads values back.
* Resuming: steps come from ``state.global_step`` and ``log_history`` is saved with the Trainer's checkpoints, so a
  resumed run continues the series; ``state_dict``/``load_state_dict`` carry the unflushed values if you need them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

try:
    from transformers import TrainerCallback as _TrainerCallback
    from transformers.trainer_callback import DefaultFlowCallback as _DefaultFlowCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastcka.integrations.hf needs Hugging Face transformers: pip install fastcka[hf]"
    ) from e

from ..monitor import CKAMonitor, _check_monitor_kwargs

__all__ = ["CKATrainerCallback"]


class CKATrainerCallback(_TrainerCallback):
    """Logs the CKA between layers of the Trainer's model (see the module doc).

    Args:
        layers: module names or glob patterns, relative to the Trainer's model.
        flush_every: as in :class:`fastcka.CKAMonitor`; ``None`` follows the Trainer's logging steps.
        logger: an extra monitor logger that receives every measured step (the Trainer's log gets the latest).
        trainer: installs the callback ahead of the reporting integrations (see the module doc).
        **monitor_kwargs: every other keyword of :class:`fastcka.CKAMonitor` (``pairs``, ``every``, ``probe``,
            ``reduce``, ``kernel``, ``unbiased``, ...), forwarded unchanged; see its documentation. Unknown
            keywords fail here, not at ``on_train_begin``.

    The monitor is ``self.monitor`` once training has begun.
    """

    def __init__(
        self,
        layers: Union[str, Sequence[str]],
        *,
        flush_every: Optional[int] = None,
        logger: Any = None,
        trainer: Any = None,
        **monitor_kwargs: Any,
    ):
        _check_monitor_kwargs(monitor_kwargs, reserved=("model", "layers"))
        self.layers = layers
        self.flush_every = flush_every
        self.logger = logger
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Optional[CKAMonitor] = None
        self._latest: Dict[str, float] = {}
        self._latest_step: Optional[int] = None
        self._reported_step: Optional[int] = None
        self._pending_state: Optional[Dict[str, Any]] = None
        if trainer is not None:
            self.install(trainer)

    def install(self, trainer: Any) -> "CKATrainerCallback":
        """Put this callback in ``trainer``'s callback list right after its flow callback (ahead of the reporting
        integrations), removing an earlier registration of this same object."""
        cbs: List[Any] = trainer.callback_handler.callbacks
        cbs[:] = [cb for cb in cbs if cb is not self]
        at = 0
        for i, cb in enumerate(cbs):
            if isinstance(cb, _DefaultFlowCallback):
                at = i + 1
        cbs.insert(at, self)
        return self

    def _collect(self, step: int, metrics: Dict[str, float]) -> None:
        self._latest.update(metrics)
        self._latest_step = step

    # -- events --------------------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
        if model is None:
            raise ValueError("CKATrainerCallback: the Trainer passed no model to on_train_begin")
        flush_every = self.flush_every
        if flush_every is None:
            ls = getattr(state, "logging_steps", None) or getattr(args, "logging_steps", None) or 100
            flush_every = max(1, int(ls))
        kwargs_m = dict(self.monitor_kwargs)
        kwargs_m.setdefault("keep_history", False)
        loggers: List[Any] = [self._collect]
        if self.logger is not None:
            loggers.extend(self.logger if isinstance(self.logger, (list, tuple)) else [self.logger])
        self.monitor = CKAMonitor(model, self.layers, logger=loggers, flush_every=flush_every, **kwargs_m)
        self.monitor._discard = not state.is_world_process_zero
        self.monitor._resume_at(int(state.global_step))  # resumed runs continue from the Trainer's step
        if self._pending_state is not None:
            self.monitor.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.step(step=int(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        mon = self.monitor
        if mon is None or mon.closed or not state.is_world_process_zero:
            return
        mon.flush()
        if not self._latest or self._latest_step == self._reported_step:
            return  # nothing measured since the last record
        self._reported_step = self._latest_step
        latest = dict(self._latest)
        if logs is not None:
            logs.update(latest)
        hist = state.log_history
        if hist and hist[-1].get("step") == state.global_step:
            hist[-1].update(latest)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush what is buffered and remove the hooks. The Trainer has no exception event, so a run that may raise
        should use the callback as a context manager (``with CKATrainerCallback(...) as cb: trainer.train()``) or
        call this in a ``finally``; on_train_end calls it on a normal finish. The monitor is kept (closed) so that
        ``monitor.history`` stays readable."""
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close()

    def __enter__(self) -> "CKATrainerCallback":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- manual checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return self.monitor.state_dict() if self.monitor is not None else dict(self._pending_state or {})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        if self.monitor is not None:
            self.monitor.load_state_dict(state)
        else:
            self._pending_state = dict(state)
