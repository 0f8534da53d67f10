"""Lightning callback: :class:`fastcka.CKAMonitor` inside ``Trainer.fit`` (``pip install fastcka[lightning]``).

::

    from fastcka.integrations.lightning import CKACallback
    trainer = L.Trainer(callbacks=[CKACallback(["encoder.layer.*"], probe=probe_batch, every=50)])

* The monitor hooks the LightningModule's submodules (names relative to the LightningModule) at ``setup`` and is
  stepped in ``on_train_batch_end`` once per optimizer step (gradient-accumulation micro-batches are skipped), with
  ``trainer.global_step`` as the step, so ``every`` counts optimizer steps.
* Values are buffered on the device; every ``flush_every`` steps (default: the trainer's ``log_every_n_steps``)
  they are read back in one transfer and written with ``logger.log_metrics(..., step=global_step)`` to every logger
  of the trainer (CSVLogger, TensorBoardLogger, WandbLogger, ...). The remainder is flushed at the end of training.
* Distributed: every rank runs the same hooks and probe forwards (no collectives are added, and sharded models see
  the same forward on all ranks); only global rank zero reads the values back and logs them.
* The series state (step and unflushed values) is saved in checkpoints and restored on resume.

Built on ``lightning.pytorch.Callback`` when the ``lightning`` package is installed, else on
``pytorch_lightning.Callback``.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Union

try:
    from lightning.pytorch import Callback as _Callback
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from pytorch_lightning import Callback as _Callback
    except ImportError as e:
        raise ImportError(
            "fastcka.integrations.lightning needs Lightning: pip install fastcka[lightning] "
            "(the 'lightning' or 'pytorch-lightning' package)"
        ) from e

from ..monitor import CKAMonitor, _check_monitor_kwargs

__all__ = ["CKACallback"]


class CKACallback(_Callback):
    """Logs the CKA between layers of the LightningModule during training (see the module doc).

    Args:
        layers: module names or glob patterns, relative to the LightningModule.
        flush_every: as in :class:`fastcka.CKAMonitor`; ``None`` follows the trainer's ``log_every_n_steps``.
        **monitor_kwargs: every other keyword of :class:`fastcka.CKAMonitor` (``pairs``, ``every``, ``probe``,
            ``reduce``, ``kernel``, ``unbiased``, ...), forwarded unchanged; see its documentation. ``logger`` is
            not accepted: the values go to the trainer's loggers. Unknown keywords fail here, not at ``setup``.

    The monitor is ``self.monitor`` once fitting has started.
    """

    def __init__(self, layers: Union[str, Sequence[str]], *, flush_every: Optional[int] = None, **monitor_kwargs: Any):
        super().__init__()
        _check_monitor_kwargs(monitor_kwargs, reserved=("model", "layers", "logger", "flush_every"))
        self.layers = layers
        self.flush_every = flush_every
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Optional[CKAMonitor] = None
        self._trainer = None
        self._last_step: Optional[int] = None
        self._pending_state: Optional[Dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        kw = self.monitor_kwargs
        return self._generate_state_key(layers=str(self.layers), pairs=str(kw.get("pairs")), every=kw.get("every", 1))

    # -- logging through the trainer's loggers ---------------------------------------------------------------------
    def _log(self, step: int, metrics: Dict[str, float]) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or (self.monitor is not None and not self.monitor.closed):
            return
        self._trainer = trainer
        flush_every = self.flush_every if self.flush_every is not None else max(1, int(trainer.log_every_n_steps))
        kwargs = dict(self.monitor_kwargs)
        kwargs.setdefault("keep_history", not trainer.loggers)  # with logger=False, keep them where they can be read
        self.monitor = CKAMonitor(pl_module, self.layers, logger=self._log, flush_every=flush_every, **kwargs)
        self.monitor._discard = not trainer.is_global_zero
        if self._pending_state is not None:
            self.monitor.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # After a checkpoint is restored: continue from the Trainer's step (a resume without this callback's state,
        # or with another state_key, would otherwise count from 0). A true-precision run (bf16-true, 64-true ...)
        # has its weights in that dtype: the probe gets the conversion the training batches get.
        mon = self.monitor
        if mon is None or mon.closed:
            return
        if int(trainer.global_step) > mon.step_count:
            mon._resume_at(int(trainer.global_step))
        if mon.probe is not None and not callable(mon.probe):
            mon.probe = trainer.precision_plugin.convert_input(mon.probe)
            mon._device_cache.pop("probe", None)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        if mon is None or mon.closed:
            return
        step = int(trainer.global_step)
        if step == self._last_step or step <= mon.step_count:  # accumulation micro-batch: no optimizer step yet
            return
        self._last_step = step
        mon.step(step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.flush()
            if trainer.is_global_zero:
                for lg in trainer.loggers:
                    lg.save()

    def _close(self) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close()  # kept (closed) so that its history stays readable
            finally:
                self._trainer = None
                self._last_step = None

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Flush first: the values just before a failure are the ones worth having. A failure to log must not hide
        # the exception that ended training.
        if self.monitor is None or self.monitor.closed:
            return
        try:
            self.monitor.flush()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"CKACallback: could not flush the CKA values after the training error: {e!r}", RuntimeWarning)
        finally:
            self.monitor.remove_hooks()
            self.monitor._closed = True

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        if self.monitor is None:
            return dict(self._pending_state or {})
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)
