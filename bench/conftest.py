"""pytest configuration of the benchmark suites: collects bench_*.py, fixes the torch thread count, and writes the
machine (CPU model, cores, torch version and threads, load average) into pytest-benchmark's machine_info.

    make bench                       # quick mode (< 5 min on 2 cores)
    make bench-full                  # FASTCKA_BENCH_FULL=1: every size of the issues, memory of every row
    BENCH_ARGS="--benchmark-json=bench/results.json" make bench-full   # then python bench/report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def pytest_collect_file(file_path, parent):
    # pytest only collects test_*.py by default; the suites are bench_*.py. Files named on the command line are
    # collected by pytest itself (do not collect them twice).
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    _common.setup_threads()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastcka"] = _common.machine()


def pytest_report_header(config):
    m = _common.machine()
    return (f"fastcka bench: {m['mode']} mode, {m['cpu']} x{m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads), loadavg {m['loadavg_at_start']}, memory per row: "
            f"{'on' if _common.MEASURE_MEM else 'off (FASTCKA_BENCH_MEM=1)'}")
