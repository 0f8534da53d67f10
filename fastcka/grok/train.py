"""The grokking trainer: full-batch AdamW on a small transformer, logging Ô01 and the other progress measures.

One config dataclass (every field a CLI flag of ``fastcka grok``), one loop. Row ``t`` of the log describes the model
after ``t`` optimiser updates (row 0 is the initialisation): train loss and accuracy and the residual streams come
from the full-batch forward that starts update t + 1, so measuring Ô01 costs no extra forward.

Logged every ``every`` steps (``log.csv``):
  train_loss, train_acc, test_loss, test_acc;
  train_loss_max: the largest train loss since the previous row (so that loss spikes between rows are seen);
  o01: linear CKA between the residual streams after block 0 and block 1 at the answer position, over the probe set
       (all training inputs, or a seeded subset of ``probe`` of them);
  fourier: Fourier frequency concentration of W_E's residue rows (top ``fourier_top_k`` frequencies; NaN for parity);
  fourier_mul: the same in the multiplicative basis (rows 1 … p−1 by discrete log; mul and div only: the column
       is written only for them);
  weight_norm: L2 norm of all parameters;
  spec_entropy: spectral entropy of the covariance of the last residual stream at the answer position (probe set).

Determinism: on the CPU the same config and thread count gives the same log, bit for bit (tested with 1 and 2
threads); a different thread count changes the rounding and hence the trajectory (grok steps moved by ~100 steps in
our runs). On CUDA, bit-for-bit repeats are not promised (atomic adds in the embedding backward). A checkpoint
(``checkpoint.pt``: model, optimiser, log so far) is written every ``checkpoint_every`` steps, at the end and on
Ctrl-C; resuming from it continues exactly as if the run had not stopped. It is read back with
``torch.load(weights_only=True)`` (tensors and plain data only): a run directory from someone else cannot run code.

Divergence: when the training loss (with ``--force-cka`` the whole loss) or the measured activations become non-finite,
the run stops at the next logged row and still writes its log, summary, plot and checkpoint; ``summary["diverged"]``
says at which step and why (None for a run that did not diverge). Tracking the first bad step costs no host sync.

Speed: the fast forward (see model.py), subnormals flushed to zero (AdamW's second moments of tiny gradients go
subnormal and subnormal arithmetic is ~100× slower on x86), and one host sync per logged row, none in between.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import _metrics
from .data import TASKS, check_n_samples, make_dataset
from .detect import DETECTOR_VERSION, Detector, DetectorConfig
from .model import ModelConfig, Transformer

CHECKPOINT, CONFIG, LOG, SUMMARY, PLOT = "checkpoint.pt", "config.json", "log.csv", "summary.json", "plot.png"
COLUMNS = ("step", "train_loss", "train_loss_max", "train_acc", "test_loss", "test_acc", "o01", "fourier",
           "weight_norm", "spec_entropy")
OPTIONAL_COLUMNS = ("fourier_mul",)  # written after COLUMNS when the rows have them (issue 20: mul and div runs)


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # the task
    task: str = _f("add", "add | sub | mul | div (mod p) | parity", choices=TASKS)
    p: int = _f(59, "modulus (prime for div)")
    train_frac: float = _f(0.4, "fraction of all examples used for training, in (0, 1)")
    n_bits: int = _f(10, "parity: number of bits")
    k: int = _f(3, "parity: number of relevant bits")
    n_samples: int = _f(0, "parity: a seeded sample of this many distinct strings (0: all 2^n_bits; 2^16 if n_bits > 16)")
    seed: int = _f(0, "seeds the split, the initialisation and the probe subset")
    # the model
    n_layers: int = _f(2, "transformer blocks (Ô01 needs at least 2)")
    d_model: int = _f(128, "residual stream width")
    n_heads: int = _f(4, "attention heads")
    d_mlp: int = _f(512, "MLP hidden width")
    layer_norm: bool = _f(False, "pre-LN blocks and a final LayerNorm")
    pos_emb: str = _f("learned", "learned | sinusoidal | none")
    act: str = _f("relu", "relu | gelu")
    # the optimiser (full batch AdamW)
    lr: float = _f(3e-3, "peak learning rate")
    weight_decay: float = _f(1.0, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.98, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon (torch's default 1e-8); a larger value damps the update when the gradients "
                         "are tiny, which suppresses the slingshot train-loss spikes (issue 20)")
    warmup: int = _f(10, "linear warm-up steps")
    max_steps: int = _f(3000, "optimiser updates at most")
    # what is measured
    every: int = _f(25, "log (and measure Ô01) every this many steps")
    probe: int = _f(0, "Ô01 over a seeded subset of this many training inputs (0: all of them)")
    unbiased: bool = _f(False, "debiased CKA (Song et al. HSIC1) for Ô01")
    fourier_top_k: int = _f(5, "frequencies counted by the Fourier concentration of W_E")
    force_cka: float = _f(0.0, "add λ·(1 − Ô01) to the loss (the forcing experiment)")
    grok_acc: float = _f(0.95, "test accuracy that defines the grok step")
    stop_after_grok: int = _f(-1, "stop this many steps after the grok step (-1: run to max_steps)")
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # how it runs (may change on resume)
    out: str = _f("runs/grok", "run directory")
    device: str = _f("auto", "cpu | cuda | auto (cuda when available)")
    threads: int = _f(0, "torch CPU threads (0: torch's default; use 1 per run when running runs in parallel)")
    fast: bool = _f(True, "fast forward (model.py); --no-fast for the plain one")
    checkpoint_every: int = _f(1000, "write a checkpoint every this many steps (and always at the end)")
    progress: bool = _f(True, "tqdm progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.detector, dict):
            self.detector = DetectorConfig(**self.detector)
        if self.task not in TASKS:
            raise ValueError(f"--task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"--train-frac: expected a fraction strictly between 0 and 1, got {self.train_frac}")
        if self.n_layers < 2:
            raise ValueError(f"--n-layers: Ô01 compares blocks 0 and 1, so at least 2 are needed, got {self.n_layers}")
        for name in ("d_model", "n_heads", "d_mlp", "fourier_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"--threads: expected 0 (torch's default) or a positive count, got {self.threads}")
        for name in ("lr", "weight_decay", "force_cka", "grok_acc"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')}: expected a finite number, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay: expected a value >= 0, got {self.weight_decay}")
        if not 0 < self.grok_acc <= 1:
            raise ValueError(f"--grok-acc: expected a test accuracy in (0, 1], got {self.grok_acc}")
        if not self.out.strip():
            raise ValueError("--out: expected a run directory, got an empty path")
        for name in ("every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive number of steps, got {getattr(self, name)}")
        if self.max_steps < 0 or self.warmup < 0 or self.probe < 0:
            raise ValueError("--max-steps, --warmup and --probe must be >= 0")
        if self.probe and self.probe < 4:
            raise ValueError(f"--probe: CKA needs at least 4 examples, got {self.probe}")
        if self.lr <= 0:
            raise ValueError(f"--lr: expected a positive learning rate, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("--beta1/--beta2: expected values in [0, 1)")
        if not (self.adam_eps > 0 and math.isfinite(self.adam_eps)):
            raise ValueError(f"--adam-eps: expected a positive finite epsilon, got {self.adam_eps}")
        if self.task == "parity":
            check_n_samples(self.n_bits, self.n_samples)
        elif self.n_samples:
            raise ValueError("--n-samples: only the parity task samples its strings")
        if self.force_cka < 0:
            raise ValueError(f"--force-cka: expected λ >= 0, got {self.force_cka}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device: expected cpu, cuda or auto, got {self.device!r}")


# Fields that may differ between a checkpoint and the config that resumes it: they do not change the trajectory.
RESUMABLE = {"max_steps", "stop_after_grok", "detector", "out", "device", "threads", "checkpoint_every", "progress",
             "grok_acc"}


def check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """Raise a ValueError naming the first flag whose value differs from the checkpoint's config."""
    now = dataclasses.asdict(cfg)
    for name, old in saved.items():
        if name not in RESUMABLE and now.get(name) != old:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: the checkpoint in {cfg.out} was trained with {flag} {old}, "
                             f"not {now.get(name)}; drop the flag or start a new run directory with --out")


class _StopOnCtrlC:
    """The first Ctrl-C asks the loop to stop at the end of the current step (and checkpoint); a second one
    interrupts at once. SIGUSR1 (where there is one) asks for the same stop and never interrupts: a parallel grid
    passes a `kill -INT` of its main process on to its workers with it, which a terminal's Ctrl-C reaches too."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._old_usr1: Any = None

    def __enter__(self) -> "_StopOnCtrlC":
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
            if hasattr(signal, "SIGUSR1"):
                self._old_usr1 = signal.signal(signal.SIGUSR1, self._request)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._old = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if self._old_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._old_usr1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {name} requested but torch sees no CUDA device")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` + 1: linear warm-up over ``warmup`` updates, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def build(cfg: TrainConfig, device: torch.device):
    """Data, model, optimiser and probe indices of a config, freshly initialised from its seed."""
    ds = make_dataset(cfg.task, cfg.p, cfg.train_frac, cfg.seed, cfg.n_bits, cfg.k, device, cfg.n_samples)
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(ds.vocab_size, ds.n_classes, ds.seq_len, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp,
                       cfg.layer_norm, cfg.pos_emb, cfg.act)
    model = Transformer(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    n = ds.train_x.shape[0]
    if cfg.probe and cfg.probe < n:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        probe = torch.randperm(n, generator=g)[: cfg.probe].sort().values.to(device)
    else:
        probe = torch.arange(n, device=device)
    return ds, model, opt, probe


def o01(resid: list[torch.Tensor], probe: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Ô01: linear CKA of the answer-position residual streams after blocks 0 and 1, over the probe set."""
    return _metrics.cka(resid[0][probe], resid[1][probe], unbiased)


@torch.no_grad()
def measure(cfg: TrainConfig, ds, model: Transformer, probe: torch.Tensor, step: int, ce: torch.Tensor,
            logits: torch.Tensor, resid: list[torch.Tensor], o: Optional[torch.Tensor],
            loss_max: torch.Tensor) -> dict[str, float]:
    """One log row, from the training forward of this step plus a test forward. The only host syncs of the loop."""
    test_logits, _ = model(ds.test_x, fast=cfg.fast)
    if o is None:
        o = o01(resid, probe, cfg.unbiased)
    fourier = (_metrics.frequency_concentration(model.tok_emb.weight[: ds.p], cfg.fourier_top_k)
               if ds.p is not None else torch.tensor(math.nan))
    norm = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters()))
    row = {
        "step": step,
        "train_loss": ce,
        "train_loss_max": loss_max,
        "train_acc": (logits.argmax(-1) == ds.train_y).double().mean(),
        "test_loss": F.cross_entropy(test_logits, ds.test_y),
        "test_acc": (test_logits.argmax(-1) == ds.test_y).double().mean(),
        "o01": o,
        "fourier": fourier,
        "weight_norm": norm,
        "spec_entropy": _metrics.spectral_entropy(resid[-1][probe]),
    }
    if cfg.task in ("mul", "div"):
        row["fourier_mul"] = _metrics.frequency_concentration(model.tok_emb.weight[: ds.p], cfg.fourier_top_k,
                                                              "multiplicative")
    return {k: (v if k == "step" else float(v)) for k, v in row.items()}


def save_checkpoint(path: Path, cfg: TrainConfig, step: int, model, opt, rows, loss_max,
                    diverged: Optional[dict] = None) -> None:
    """Atomic: written to a temporary file, then renamed, so a Ctrl-C never leaves half a checkpoint. Holds tensors
    and plain data only, so that :func:`load_checkpoint` can read it with ``weights_only=True``."""
    state = {"version": 1, "config": dataclasses.asdict(cfg), "step": step, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "rows": rows, "loss_max": loss_max, "diverged": diverged}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


CHECKPOINT_KEYS = ("config", "step", "model", "optimizer", "rows", "loss_max")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, read with ``torch.load(weights_only=True)``: tensors and plain
    data only, so a crafted file cannot run code. A file that is truncated, empty, not a checkpoint or holds anything
    else gets a ValueError naming ``--resume``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip()
        detail = detail.splitlines()[0].split(". ")[0][:200] if detail else _first_line(e)
        if "global" in detail.lower():  # a class or function reference: what a code-running pickle needs
            raise ValueError(f"--resume: refused to load {path}: it holds more than tensors and plain data ({detail}); "
                             "fastcka reads checkpoints with weights_only=True and never runs code from a run "
                             "directory") from None
        raise ValueError(f"--resume: {path} is not a fastcka checkpoint ({detail})") from None
    except Exception as e:  # noqa: BLE001 - truncated, empty, not a torch file: all mean "unreadable"
        raise ValueError(f"--resume: {path} is not a readable checkpoint, truncated or corrupt? "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise ValueError(f"--resume: {path} is not a fastcka grok checkpoint (no {', '.join(missing)})")
    return state


def write_log(out: Path, rows: list[dict]) -> None:
    cols = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if rows and c in rows[-1])
    with open(out / LOG, "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:  # rows from before a column existed (an older checkpoint resumed) get NaN there
            f.write(",".join(str(r["step"]) if c == "step" else repr(r.get(c, math.nan)) for c in cols) + "\n")


def read_log(path: Path | str) -> list[dict]:
    """log.csv back into rows (step an int, everything else a float)."""
    lines = Path(path).read_text().splitlines()
    cols = lines[0].split(",")
    return [{c: int(v) if c == "step" else float(v) for c, v in zip(cols, line.split(","))} for line in lines[1:]]


def first_step(rows: list[dict], key: str, threshold: float) -> Optional[int]:
    return next((r["step"] for r in rows if r[key] >= threshold), None)


def summarise(cfg: TrainConfig, rows: list[dict], extra: dict) -> dict:
    """The run's summary: memorisation, alarm, grok and lead, from the log and the detector."""
    det = Detector(cfg.detector)
    for r in rows:
        det.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    d = det.result
    other_guards = {}  # the same rule with the spike guard's other settings, to show how much the spikes matter
    for guard in ("off", "hold", "rebase"):
        other = Detector(dataclasses.replace(cfg.detector, spike_guard=guard))
        for r in rows:
            other.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
        other_guards[guard] = other.result.alarm_step
    grok = first_step(rows, "test_acc", cfg.grok_acc)
    lead = grok - d.alarm_step if grok is not None and d.alarm_step is not None else None
    at_alarm = next((r["test_acc"] for r in rows if r["step"] == d.alarm_step), None)
    from .study.analysis import TEST_ACC_GAIN, test_acc_alarm  # the study's watcher, one definition

    watch = test_acc_alarm(rows, cfg.detector.memorised_acc)
    return {
        "memorised_step": d.memorised_step, "alarm_step": d.alarm_step, "rise_onset_step": d.rise_onset_step,
        "first_rise_step": d.first_rise_step, "detector_version": DETECTOR_VERSION, "grok_step": grok, "lead": lead, "test_acc_at_alarm": at_alarm,
        "o01_peak": d.peak, "o01_min": d.minimum, "o01_min_step": d.minimum_step, "spike_steps": d.spike_steps,
        "alarm_step_by_spike_guard": other_guards, "test_acc_watch_step": watch, "test_acc_watch_gain": TEST_ACC_GAIN,
        "test_acc_at_memorised": next((r["test_acc"] for r in rows if r["step"] == d.memorised_step), None),
        "final": rows[-1] if rows else None, "cka_backend": _metrics.BACKEND, **extra,
        "config": dataclasses.asdict(cfg),
    }


def divergence(bad_step: int, bad_loss: float, row: dict, forced: bool) -> Optional[dict]:
    """Whether the run has diverged, seen at a logged row: ``{"step", "reason"}``, or None.

    ``bad_step``/``bad_loss``: the first step (-1: none yet) whose loss was not finite, and that loss. A finite loss
    with non-finite activations (Ô01 NaN: CKA is NaN exactly when its input is not finite) counts too."""
    what = "loss" if forced else "train loss"
    if bad_step >= 0:
        return {"step": bad_step, "reason": f"the {what} became {bad_loss} at step {bad_step}"}
    if not math.isfinite(row["o01"]) or not math.isfinite(row["spec_entropy"]):
        return {"step": row["step"], "reason": f"the activations became non-finite by step {row['step']}"}
    return None


def train(cfg: TrainConfig, resume: bool = False, callback: Optional[Callable[[int], None]] = None) -> dict:
    """Train (or resume) the run in ``cfg.out``; write config.json, log.csv, summary.json, plot.png, checkpoint.pt.
    Returns the summary. ``callback(step)`` is called after every update (tests, custom monitors)."""
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if resume and not ckpt_path.exists():
        raise ValueError(f"--resume: no {CHECKPOINT} in {out}")
    if not resume and ckpt_path.exists():
        raise ValueError(f"--out: {out} already holds a run; continue it with --resume {out}, "
                         f"or pass --overwrite (or another --out)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    ds, model, opt, probe = build(cfg, device)
    step, rows, loss_max = 0, [], torch.zeros((), device=device)
    if resume:
        state = load_checkpoint(ckpt_path, device)
        if state.get("diverged"):
            raise ValueError(f"--resume: the run in {out} diverged ({state['diverged'].get('reason')}); there is "
                             "nothing to continue: start a new run (a smaller --lr?) with another --out or --overwrite")
        if not isinstance(state["config"], dict):
            raise ValueError(f"--resume: {ckpt_path} is not a fastcka grok checkpoint (its config is not a dict)")
        check_resumable(state["config"], cfg)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, rows, loss_max = int(state["step"]), list(state["rows"]), state["loss_max"].to(device)
            missing = [c for r in rows for c in COLUMNS if c not in r][:1]
            if missing:
                raise KeyError(f"a log row has no {missing[0]}")
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ValueError(f"--resume: {ckpt_path} does not fit the run's config ({type(e).__name__}: "
                             f"{_first_line(e)})") from None
        while rows and rows[-1]["step"] % cfg.every and rows[-1]["step"] == step:  # the extra last row of a
            rows.pop()  # run that ended between two log steps: an uninterrupted run would not have it
    flag = "--resume" if resume else "--out"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag}: {out} is a file, not a run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    except OSError as e:
        raise ValueError(f"{flag}: cannot write the run directory {out} ({e.strerror or _first_line(e)})") from None

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress, desc=f"grok {cfg.task} p={cfg.p}",
               unit="step", dynamic_ncols=True)
    det = Detector(cfg.detector)
    for r in rows:
        det.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    grok = first_step(rows, "test_acc", cfg.grok_acc)
    start_step, t0, interrupted, diverged = step, time.perf_counter(), False, None
    # the first step whose loss was not finite, and that loss: device tensors, read only at logged rows (no sync)
    bad_step, bad_loss = torch.full((), -1, dtype=torch.long, device=device), torch.zeros((), device=device)
    with _StopOnCtrlC() as ctrl_c:
        while True:
            logits, resid = model(ds.train_x, fast=cfg.fast)
            ce = F.cross_entropy(logits, ds.train_y)
            o = o01(resid, probe, cfg.unbiased) if cfg.force_cka else None
            loss = ce + cfg.force_cka * (1.0 - o) if cfg.force_cka else ce
            logged = bool(rows) and rows[-1]["step"] == step  # resumed from the checkpoint written at the end
            if not logged:
                loss_max = torch.maximum(loss_max, ce.detach())
            new_bad = (bad_step < 0) & ~torch.isfinite(loss.detach())
            bad_step = torch.where(new_bad, step, bad_step)
            bad_loss = torch.where(new_bad, loss.detach(), bad_loss)
            if not logged and (step % cfg.every == 0 or step == cfg.max_steps):
                row = measure(cfg, ds, model, probe, step, ce.detach(), logits.detach(), [r.detach() for r in resid],
                              None if o is None else o.detach(), loss_max)
                rows.append(row)
                if step % cfg.every == 0:  # (a last row between log steps keeps the running max going)
                    loss_max = torch.zeros((), device=device)
                if det.update(step, row["o01"], row["train_acc"], row["train_loss_max"]):
                    bar.write(f"step {step}: Ô01 alarm (re-rise above its post-memorisation minimum)")
                if grok is None and row["test_acc"] >= cfg.grok_acc:
                    grok = step
                bar.set_postfix(train=f"{row['train_acc']:.2f}", test=f"{row['test_acc']:.2f}", o01=f"{row['o01']:.3f}",
                                alarm=det.result.alarm_step, refresh=False)
                diverged = divergence(int(bad_step), float(bad_loss), row, cfg.force_cka > 0)
                if diverged is not None:
                    bar.write(f"step {step}: stopping, the run diverged ({diverged['reason']})")
                    break
            if step >= cfg.max_steps or (grok is not None and 0 <= cfg.stop_after_grok <= step - grok):
                break
            if ctrl_c.requested:
                interrupted = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            opt.step()
            step += 1
            bar.update(1)
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt_path, cfg, step, model, opt, rows, loss_max)
            if callback is not None:
                callback(step)
    bar.close()
    if diverged is None and rows and int(bad_step) >= 0:  # went bad after the last logged row (a Ctrl-C stop)
        diverged = divergence(int(bad_step), float(bad_loss), rows[-1], cfg.force_cka > 0)
    wall = time.perf_counter() - t0
    save_checkpoint(ckpt_path, cfg, step, model, opt, rows, loss_max, diverged)
    write_log(out, rows)
    extra = {"steps": step, "steps_this_session": step - start_step, "wall_s": wall,
             "steps_per_s": (step - start_step) / wall if wall > 0 else None, "interrupted": interrupted,
             "diverged": diverged,
             "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    summary = summarise(cfg, rows, extra)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if rows:
        from .plot import plot_run

        plot_run(rows, summary, out / PLOT)
    return summary


def format_report(s: dict) -> str:
    """The short human report the CLI prints."""
    c = s["config"]
    what = (f"{c['task']} p={c['p']}" if c["task"] != "parity" else f"parity n={c['n_bits']} k={c['k']}"
            + (f" ({c['n_samples']} strings)" if c.get("n_samples") else ""))
    rate = f"{s['steps_per_s']:.1f} steps/s" if s.get("steps_per_s") else "-"
    lines = [f"fastcka grok: {what}, train {c['train_frac']:.0%}, seed {c['seed']}, lr {c['lr']:g}, wd "
             f"{c['weight_decay']:g}{', force-cka ' + format(c['force_cka'], 'g') if c['force_cka'] else ''}"
             f"{', adam-eps ' + format(c['adam_eps'], 'g') if c.get('adam_eps', TrainConfig.adam_eps) != TrainConfig.adam_eps else ''}",
             f"  {s['steps']} steps, {s['wall_s']:.0f} s this session ({rate}, {s['device']}, {s['threads']} threads)"]
    if (not s["interrupted"] and not s.get("diverged") and s["grok_step"] is not None and 0 <= c["stop_after_grok"]
            and s["steps"] < c["max_steps"]):
        lines.append(f"  stopped {c['stop_after_grok']} steps after the grok step (--stop-after-grok)")
    if s["interrupted"]:
        lines.append(f"  interrupted at step {s['steps']}: continue with  fastcka grok --resume {c['out']}")
    if s.get("diverged"):
        lines.append(f"  DIVERGED: {s['diverged']['reason']}; stopped at step {s['steps']} (the log, summary, plot and "
                     "checkpoint are written; a smaller --lr may help)")

    def at(step: Optional[int], none: str) -> str:
        return f"step {step}" if step is not None else none

    grok_acc, mem = c["grok_acc"], c["detector"]["memorised_acc"]
    lines += [f"  memorised (train acc >= {mem:.0%}):  {at(s['memorised_step'], 'not memorised')}"]
    if s["o01_peak"] is not None and s["o01_min"] is not None:
        lines.append(f"  Ô01 (smoothed): peak {s['o01_peak']:.3f} up to memorisation, minimum {s['o01_min']:.3f} at "
                     f"step {s['o01_min_step']}; {len(s['spike_steps'])} train-loss spikes")
    alarm = at(s["alarm_step"], "no alarm")
    if s["alarm_step"] is not None:
        alarm += f" (rise began at step {s['rise_onset_step']}; test acc then {s['test_acc_at_alarm']:.0%})"
    guards = ", ".join(f"{g}: {a if a is not None else 'none'}" for g, a in s["alarm_step_by_spike_guard"].items()
                       if g != c["detector"]["spike_guard"])
    lines += [f"  alarm (Ô01 re-rise +{c['detector']['rise']:g}, spike guard {c['detector']['spike_guard']}):  {alarm}",
              f"    the same rule with spike guard {guards}",
              "    (in the study the Ô01 alarm fired at a near-fixed step whether or not the run went on to grok: "
              "it says the run memorised, not that or when it will grok; docs/STUDY.md)"]
    if "test_acc_watch_step" in s:  # summaries written before issue 20 lack the watcher
        base = s.get("test_acc_at_memorised")
        lines.append(f"  test-accuracy watcher (test acc +{s['test_acc_watch_gain']:g} over its value at memorisation"
                     + (f", {base:.1%}" if base is not None else "") + f"):  "
                     f"{at(s['test_acc_watch_step'], 'did not fire')}  (the study's best signal)")
    lines.append(f"  grokked (test acc >= {grok_acc:.0%}):  {at(s['grok_step'], 'did not grok')}")
    if s["lead"] is not None:
        lines.append(f"  lead time:  {s['lead']} steps ({s['lead'] / max(s['grok_step'], 1):.0%} of the grok step)"
                     + ("  — the alarm came AFTER the jump" if s["lead"] < 0 else ""))
    lines.append(f"  run directory: {c['out']}  (config.json, log.csv, summary.json, plot.png, checkpoint.pt)")
    return "\n".join(lines)
