"""The study (issue 9): run a grid of grokking runs from a TOML file, resumably, and aggregate them into docs/STUDY.md.

The grid file::

    [defaults]              # TrainConfig fields for every run (fastcka grok flags, underscores)
    every = 25
    [defaults.detector]     # DetectorConfig fields (the Ô01 detector run during training and at report time)
    rise = 0.05

    [[group]]               # runs are expanded in file order: put the cheapest informative ones first
    name = "fast-add-p59"   # run directories are <name>-s<seed>
    role = "grok"           # grok | control | parity | forcing | arch  (what the run is for in the report)
    seeds = [0, 1, 2, 3]
    config = { p = 59, lr = 3e-3 }

A group name may appear more than once (with other seeds) to interleave cheap and expensive runs.

Each run trains in ``<ckpt_dir>/<run>`` (checkpoint.pt, plot.png; gitignored) and, once finished, its small outputs
(config.json, log.csv, summary.json with a ``study`` entry) are copied to ``<runs_dir>/<run>/``. A run whose
``summary.json`` is in ``runs_dir`` is skipped; a run with a checkpoint but no summary (killed) resumes from it.

The package: ``grid`` (the grid file and the runner), ``analysis`` (per-run facts), ``stats``, ``tables``,
``figures``, ``verdicts`` and ``report`` (docs/STUDY.md).
"""

from .analysis import SIGNALS, TEST_ACC_GAIN, TEST_ACC_LABEL, Signal, analyse_run, load_runs, read_rows, regime, \
    signal_alarm, spike_jumps, test_acc_alarm
from .figures import plot_leads, plot_runs
from .grid import QUICK_GRID, ROLES, SMALL_FILES, STOP, SUMMARY, RunSpec, load_grid, run_grid
from .report import write_report
from .stats import bootstrap_median_ci, quantile, signal_stats, wilson
from .tables import SENSITIVITY_PERSISTS, SENSITIVITY_RISES, sensitivity_table, stats_table
from .verdicts import GUARDS, PILOT, claim_verdicts

__all__ = ["GUARDS", "PILOT", "QUICK_GRID", "ROLES", "SENSITIVITY_PERSISTS", "SENSITIVITY_RISES", "SIGNALS", "SMALL_FILES",
           "STOP", "SUMMARY", "TEST_ACC_GAIN", "TEST_ACC_LABEL", "RunSpec", "Signal", "analyse_run", "bootstrap_median_ci",
           "claim_verdicts", "load_grid", "load_runs", "plot_leads", "plot_runs", "quantile", "read_rows", "regime", "run_grid", "sensitivity_table",
           "signal_alarm", "signal_stats", "spike_jumps", "stats_table", "test_acc_alarm", "wilson", "write_report"]
