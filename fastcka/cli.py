"""The ``fastcka`` command line (console script ``fastcka`` and ``python -m fastcka``).

Subcommands are registered in ``SUBCOMMANDS``: each is a function ``add_<name>(subparsers)`` that adds its parser and
sets ``func`` (called with the parsed namespace, returns the exit code). To add one (``study``, say), write the two
functions and add one line to ``SUBCOMMANDS``.

Exit codes (every subcommand): 0 done; 2 a user mistake (a bad flag value, an unusable --out, a run directory that
cannot be resumed), with a one-line ``fastcka <command>: error: --flag: ...`` message and no traceback; 3 a ``grok``
run that diverged (its loss or activations became non-finite: it stopped and wrote its log, summary, plot and
checkpoint, and says at which step); 130 interrupted with Ctrl-C (a grok run checkpoints first: ``--resume`` it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

EXIT_USAGE = 2  # as argparse's own errors
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = (f"exit codes: 0 done; {EXIT_USAGE} bad flags or an unusable run directory; {EXIT_DIVERGED} the run "
                   f"diverged (loss or activations non-finite; it stopped and wrote its files); {EXIT_INTERRUPTED} "
                   "interrupted (resumable)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field, default None so that the command can tell which flags were given."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("help"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f"{f.metadata['help']} (default: {default})"
        if f.type in ("bool", bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            group.add_argument(_flag(f.name), type=kind, default=None, choices=f.metadata.get("choices"),
                               help=helptext, metavar=None if f.metadata.get("choices") else f.name.upper())


# --- fastcka grok -----------------------------------------------------------------------------------------------

def add_grok(sub: Any) -> None:
    from fastcka.grok.detect import DetectorConfig
    from fastcka.grok.train import TrainConfig

    p = sub.add_parser("grok", help="train a small transformer until it groks; log Ô01 and the other progress "
                       "measures, report the Ô01 alarm and the test-accuracy watcher",
                       description="Train a small transformer on modular arithmetic (or k-sparse parity) with full-batch "
                       "AdamW, log the inter-layer CKA Ô01 and other progress measures, and report memorisation, the "
                       "Ô01 re-rise alarm, the test-accuracy watcher, the grok step and the lead time. In the study "
                       "(docs/STUDY.md) the Ô01 alarm fired at a near-fixed step in runs that grokked and in runs that "
                       "did not: it says the run memorised, not that or when it will grok (its rise came with train-loss "
                       "spikes, and survived their suppression in a pre-registered test); the test-accuracy watcher "
                       "was the best signal. Writes config.json, "
                       "log.csv, summary.json, plot.png and checkpoint.pt into the run directory.", epilog=EXIT_CODES_HELP)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint (flags given must "
                   "match the run's config, except --max-steps, --stop-after-grok, detector and runtime flags)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (its run files only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--logx", action="store_true", help="log-scale step axis in the plot")
    p.add_argument("--json", action="store_true", help="print the summary as JSON after the report")
    _add_dataclass_flags(p, TrainConfig, "training")
    _add_dataclass_flags(p, DetectorConfig, "detector")
    p.set_defaults(func=run_grok)


def _default_out(c: dict) -> str:
    what = f"{c['task']}-p{c['p']}" if c["task"] != "parity" else f"parity-n{c['n_bits']}-k{c['k']}"
    if c.get("n_samples"):
        what += f"-{c['n_samples']}strings"
    return str(Path("runs") / "grok" / f"{what}-seed{c['seed']}")


def grok_config(args: argparse.Namespace):
    """The TrainConfig of a ``fastcka grok`` invocation (with --resume: the run's config overridden by the flags given)."""
    from fastcka.grok.detect import DetectorConfig
    from fastcka.grok.train import CONFIG, TrainConfig

    det_names = {f.name for f in dataclasses.fields(DetectorConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"detector"}
    given = {k: v for k, v in vars(args).items() if v is not None and k in train_names}
    given_det = {k: v for k, v in vars(args).items() if v is not None and k in det_names}
    if args.quiet:
        given["progress"] = False
    base: dict = {}
    if args.resume is not None:
        if not args.resume.strip():
            raise ValueError("--resume: expected a run directory, got an empty path")
        cfg_path = Path(args.resume) / CONFIG
        if not cfg_path.is_file():
            raise ValueError(f"--resume: {args.resume} holds no run ({CONFIG} not found)")
        try:
            base = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--resume: {cfg_path} is not readable JSON ({e})") from None
        if not isinstance(base, dict):
            raise ValueError(f"--resume: {cfg_path} is not a fastcka grok config (not a JSON object)")
        if "out" in given and Path(given["out"]) != Path(args.resume):
            raise ValueError(f"--out: a resumed run stays in its directory ({args.resume}); drop --out")
        base["out"] = args.resume
    try:
        det = {**base.pop("detector", {}), **given_det}
        merged = {**base, **given, "detector": DetectorConfig(**det)}
        if "out" not in merged:
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
            merged["out"] = _default_out({**defaults, **merged})
        return TrainConfig(**merged)
    except TypeError as e:  # unknown keys or wrong types: only a hand-edited config.json gets here
        if args.resume is None:
            raise
        raise ValueError(f"--resume: {Path(args.resume) / CONFIG} is not a fastcka grok config ({e})") from None


def run_grok(args: argparse.Namespace) -> int:
    from fastcka.grok.train import CHECKPOINT, CONFIG, LOG, PLOT, SUMMARY, format_report, train

    cfg = grok_config(args)
    out = Path(cfg.out)
    resume = args.resume is not None
    if args.overwrite and not resume and (out / CHECKPOINT).is_file():
        for name in (CHECKPOINT, CONFIG, LOG, SUMMARY, PLOT):  # the run's files, never anything else in the folder
            (out / name).unlink(missing_ok=True)
    summary = train(cfg, resume=resume)
    if args.logx:
        from fastcka.grok.plot import plot_run
        from fastcka.grok.train import PLOT, read_log

        plot_run(read_log(out / "log.csv"), summary, out / PLOT, logx=True)
    print(format_report(summary))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    if summary.get("diverged"):
        return EXIT_DIVERGED
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


# --- fastcka study ----------------------------------------------------------------------------------------------

def add_study(sub: Any) -> None:
    p = sub.add_parser("study", help="run a grid of grokking runs from a TOML file (resumable) and write docs/STUDY.md",
                       description="Run every run of GRID that has no summary.json in --runs-dir yet (a killed run "
                       "resumes from its checkpoint in --ckpt-dir), then aggregate all run directories into --doc "
                       "and its figures. With --report only the aggregation runs.")
    p.add_argument("grid", nargs="?", help=f"the grid TOML (default: {GRID_IN_CHECKOUT} when it exists here, else the "
                   "copy the package ships; ignored with --quick)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process and one thread each (default: 1)")
    p.add_argument("--quick", action="store_true", help="a built-in 3-run tiny grid (minutes); default directories "
                   "under runs/study-quick/")
    p.add_argument("--report", action="store_true", help="only aggregate the existing run directories into --doc")
    p.add_argument("--no-report", action="store_true", help="run the grid, do not write the report")
    p.add_argument("--only", metavar="GLOB", help="run only the runs whose name matches GLOB")
    p.add_argument("--runs-dir", help="small outputs per run (default: docs/study/runs)")
    p.add_argument("--ckpt-dir", help="checkpoints and plots per run (default: runs/study-ckpt)")
    p.add_argument("--doc", help="the report (default: docs/STUDY.md; figures in <doc dir>/study/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_study)


GRID_IN_CHECKOUT = Path("docs/study/grid.toml")


def default_grid() -> Optional[Path]:
    """The study's grid: ``docs/study/grid.toml`` under the current directory (a checkout), else the copy the wheel
    ships as ``fastcka/grok/study/grid.toml`` (setup.py copies it in), else None (an editable install run elsewhere)."""
    if GRID_IN_CHECKOUT.is_file():
        return GRID_IN_CHECKOUT
    from importlib import resources

    packaged = resources.files("fastcka.grok.study") / "grid.toml"
    return Path(str(packaged)) if packaged.is_file() else None


def run_study(args: argparse.Namespace) -> int:
    from fastcka.grok import study

    if args.jobs < 1:
        raise ValueError(f"--jobs: expected at least 1, got {args.jobs}")
    base = Path("runs/study-quick") if args.quick else None
    runs_dir = Path(args.runs_dir or (base / "runs" if base else "docs/study/runs"))
    ckpt_dir = Path(args.ckpt_dir or (base / "ckpt" if base else "runs/study-ckpt"))
    doc = Path(args.doc or (base / "STUDY.md" if base else "docs/STUDY.md"))
    grid_path = None if args.quick else (Path(args.grid) if args.grid is not None else default_grid())
    specs = None
    if grid_path is not None and grid_path.is_file():
        try:
            specs = study.load_grid(grid_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError is a ValueError
            raise ValueError(f"grid: {grid_path}: {e}") from None
    elif args.quick:
        specs = study.load_grid(study.QUICK_GRID)
    elif not args.report:
        where = (f"{grid_path} is not a file" if grid_path is not None else
                 f"no GRID given, and neither {GRID_IN_CHECKOUT} here nor a packaged copy (an editable install has "
                 "none: pass the checkout's docs/study/grid.toml)")
        raise ValueError(f"grid: {where}; or use --quick for a 3-run grid")
    if not args.report:
        results = study.run_grid(specs, runs_dir, ckpt_dir, jobs=args.jobs, progress=not args.quiet, only=args.only)
        if any(r["interrupted"] for r in results):
            return EXIT_INTERRUPTED
    if not args.no_report:
        path = study.write_report(runs_dir, doc, specs=specs, grid_path=grid_path)
        print(f"fastcka study: wrote {path}")
    return 0


# --- fastcka compare --------------------------------------------------------------------------------------------

def add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two grokking checkpoints block by block (CKA heatmap)",
                       description="Load two `fastcka grok` checkpoints (run directories or checkpoint.pt files: two "
                       "seeds, or one run saved at two steps), run both models on run A's task inputs and write the "
                       "CKA between every block of A and every block of B (fastcka.compare) as a heatmap, a table "
                       "on stdout and, with --save, a result file.")
    p.add_argument("run_a", metavar="A", help="run directory (with checkpoint.pt) or checkpoint file")
    p.add_argument("run_b", metavar="B", help="run directory or checkpoint file (the same task and input size as A)")
    p.add_argument("--layers", default="blocks.*", help="module names or globs, comma-separated (default: blocks.*)")
    p.add_argument("--split", choices=("all", "train", "test"), default="all", help="which of A's inputs (default: all)")
    p.add_argument("--reduce", choices=("last", "mean", "max", "flatten"), default="last",
                   help="token outputs: the answer position (last, default, as Ô01), or over positions")
    p.add_argument("--estimator", choices=("exact", "minibatch"), default="exact", help="default: exact")
    p.add_argument("--unbiased", action="store_true", help="debiased CKA (exact estimator)")
    p.add_argument("--batch-size", type=int, default=1024, help="examples per forward (default: 1024)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    p.add_argument("--out", default="cka_compare.png", help="the heatmap PNG (default: cka_compare.png; '' for none)")
    p.add_argument("--save", metavar="PATH", help="also write the result (.json, or a torch file)")
    p.add_argument("--json", action="store_true", help="print the result as JSON after the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_compare)


def _load_grok_run(path: str, flag: str, device: Any):
    """(model with the checkpoint's weights, dataset, label) of a `fastcka grok` checkpoint, read with
    weights_only=True (a crafted pickle is refused)."""
    import pickle

    import torch

    from fastcka.grok.train import CHECKPOINT, TrainConfig, build

    p = Path(path)
    ckpt = p / CHECKPOINT if p.is_dir() else p
    if not ckpt.is_file():
        raise ValueError(f"{flag}: {path} is neither a checkpoint file nor a run directory with {CHECKPOINT}")
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        cfg = TrainConfig(**{**state["config"], "device": str(device), "progress": False})
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as e:
        raise ValueError(f"{flag}: {ckpt} is not a readable fastcka grok checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    ds, model, _, _ = build(cfg, device)
    model.load_state_dict(state["model"])
    name = p.name if p.is_dir() else f"{p.parent.name}/{p.name}"
    return model, ds, f"{name} (step {state.get('step', '?')})"


def run_compare(args: argparse.Namespace) -> int:
    import torch

    import fastcka
    from fastcka.grok.train import resolve_device

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected at least 1, got {args.batch_size}")
    if args.max_batches is not None and args.max_batches < 1:
        raise ValueError(f"--max-batches: expected at least 1, got {args.max_batches}")
    if args.unbiased and args.estimator == "minibatch":
        raise ValueError("--unbiased: the minibatch estimator is always unbiased per batch; drop --unbiased")
    device = resolve_device(args.device)
    model_a, ds, label_a = _load_grok_run(args.run_a, "A", device)
    model_b, ds_b, label_b = _load_grok_run(args.run_b, "B", device)
    if (ds.vocab_size, ds.seq_len) != (ds_b.vocab_size, ds_b.seq_len):
        raise ValueError(f"B: its model reads {ds_b.seq_len} tokens of a vocabulary of {ds_b.vocab_size}, A's "
                         f"{ds.seq_len} of {ds.vocab_size}: the two runs must be on the same task and size")
    x = {"train": ds.train_x, "test": ds.test_x, "all": torch.cat([ds.train_x, ds.test_x])}[args.split]
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    reduce = -1 if args.reduce == "last" else args.reduce
    try:
        res = fastcka.compare(model_a, model_b, torch.split(x, args.batch_size), layers_a=layers,
                              estimator=args.estimator, unbiased=args.unbiased, reduce=reduce,
                              max_batches=args.max_batches, progress=not args.quiet)
    except ValueError as e:  # name the flag, not the Python argument
        msg = str(e)
        raise ValueError("--layers:" + msg[len("layers_a:"):] if msg.startswith("layers_a:") else msg) from None
    res.model_a, res.model_b = label_a, label_b
    res.extra.update(split=args.split, run_a=str(args.run_a), run_b=str(args.run_b))
    print(repr(res))
    if args.out:
        res.plot(args.out)
        print(f"fastcka compare: wrote {args.out}")
    if args.save:
        res.save(args.save)
        print(f"fastcka compare: wrote {args.save}")
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
    return 0


# --- the command ------------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[Any], None]] = [add_grok, add_study, add_compare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcka", description="fastcka: CKA/HSIC for PyTorch, and the grokking "
                                     "early-warning trainer")
    from fastcka import __version__

    parser.add_argument("--version", action="version", version=f"fastcka {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except ValueError as e:  # bad input: the message names the flag
        print(f"fastcka {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
