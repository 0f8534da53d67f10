"""Run inside the fresh venv of `make wheel-check` (only the wheel and its core dependencies installed), from a
directory that holds no fastcka source: checks what `pip install fastcka` gives a new user.

1. fastcka is the installed wheel (not a checkout), its metadata says what pyproject.toml promises (Python >= 3.11,
   core dependencies torch, matplotlib, tqdm and nothing else), it ships py.typed and the study's default grid;
2. `import fastcka` does not import matplotlib, and fastcka.streaming / fastcka.plot are reachable from it;
3. `fastcka --version`, then `fastcka grok --p 11 --max-steps 60` (progress bar on) writes a summary and a PNG;
   `fastcka study --report` reads the packaged grid (tomllib) and writes its report.
"""

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RUN = Path("runs/grok/add-p11-seed0")  # the default --out of that command


def check(cond: bool, what: str) -> None:
    if not cond:
        sys.exit(f"check_wheel: FAILED: {what}")
    print(f"check_wheel: ok: {what}")


def main() -> None:
    import fastcka

    where = Path(fastcka.__file__).resolve()
    check("site-packages" in where.parts, f"fastcka imported from the installed wheel ({where})")
    meta = md.metadata("fastcka")
    check(meta["Requires-Python"] == ">=3.11", f"Requires-Python {meta['Requires-Python']}")
    core = sorted(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in (meta.get_all("Requires-Dist") or [])
                  if "extra ==" not in r)
    check(core == ["matplotlib", "torch", "tqdm"], f"core dependencies {core}")
    check(meta["Version"] == fastcka.__version__, f"version {meta['Version']} = fastcka.__version__")
    pkg = where.parent
    check((pkg / "py.typed").is_file(), "py.typed shipped")
    check(any(pkg.glob("_C*.so")), "the compiled extension shipped")
    from fastcka.cli import default_grid

    grid = default_grid()
    check(grid is not None and grid.is_file() and pkg in grid.resolve().parents, f"the default study grid ({grid})")

    probe = ("import sys, fastcka; assert 'matplotlib' not in sys.modules; "
             "fastcka.streaming.LinearCKA; fastcka.plot.cka_heatmap; print('lazy ok')")
    check(subprocess.run([sys.executable, "-c", probe]).returncode == 0,
          "import fastcka leaves matplotlib out; fastcka.streaming and fastcka.plot reachable")

    out = subprocess.run([str(BIN / "fastcka"), "--version"], capture_output=True, text=True)
    check(out.returncode == 0 and out.stdout.strip() == f"fastcka {fastcka.__version__}", f"{out.stdout.strip()!r}")

    shutil.rmtree(RUN, ignore_errors=True)
    t0 = time.perf_counter()
    rc = subprocess.run([str(BIN / "fastcka"), "grok", "--p", "11", "--max-steps", "60"]).returncode
    check(rc == 0, f"fastcka grok --p 11 --max-steps 60 exited {rc} ({time.perf_counter() - t0:.0f} s)")
    summary = json.loads((RUN / "summary.json").read_text())
    check(summary["steps"] == 60, "summary.json: 60 steps")
    png = (RUN / "plot.png").read_bytes()
    check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, f"plot.png ({len(png)} bytes)")
    shutil.rmtree("study", ignore_errors=True)
    Path("study/runs").mkdir(parents=True)
    rc = subprocess.run([str(BIN / "fastcka"), "study", "--report", "--runs-dir", "study/runs", "--doc",
                         "study/STUDY.md"]).returncode
    check(rc == 0 and Path("study/STUDY.md").is_file(), "fastcka study --report reads the packaged grid, writes a report")
    print(f"check_wheel: all checks passed ({os.getcwd()})")


if __name__ == "__main__":
    main()
