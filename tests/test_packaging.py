"""Packaging (issue 22): the sdist carries what a build needs, the dependencies are the ones the code imports, the
Python floor and the wheel tag agree, the version has one source, and `import fastcka` stays light while its
submodules are reachable. (CI's `make wheel-check` / `make abi-check` build and install the real wheel.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import fastcka

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0].lower()


def _tracked(*paths: str) -> list:
    try:
        out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout")
    return [line for line in out.stdout.splitlines() if line]


def _imports(path: Path) -> set:
    """Top-level names of the modules a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    """Member names (without the top folder) of an sdist built from a copy of the tracked files."""
    tracked = _tracked()
    src = tmp_path_factory.mktemp("src")
    for rel in tracked:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    with tarfile.open(dist / res.stdout.strip().splitlines()[-1]) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name and m.isfile()}


def test_sdist_carries_every_source_header_and_package_file(sdist_names):
    needed = [p for p in _tracked("csrc") if p.endswith(BUILD_SUFFIXES)]
    assert any(p.endswith(".cu") for p in needed) and any(p.endswith(".h") for p in needed)
    needed += [p for p in _tracked("fastcka") if p.endswith(".py")]
    needed += ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "docs/study/grid.toml", "fastcka/py.typed"]
    assert not [p for p in needed if p not in sdist_names]
    assert not [p for p in sdist_names if p.endswith((".so", ".pyc"))]


def test_dependencies_are_what_the_code_imports():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {_name(r) for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs}
    imported = set().union(*(_imports(p) for p in (ROOT / "fastcka").rglob("*.py")))
    third_party = imported - set(sys.stdlib_module_names) - {"fastcka"}
    # every core dependency is used; numpy is not a dependency and nothing imports it
    assert core == {"torch", "matplotlib", "tqdm"} and core <= imported
    assert "numpy" not in core and "numpy" not in imported
    # whatever else is imported is an optional extra (imported lazily, with a message naming the extra)
    aliases = {"pytorch_lightning": "lightning"}  # the older name the Lightning integration falls back to
    assert not [m for m in third_party - core if aliases.get(m, m) not in extras]


def test_python_floor_and_wheel_tag_agree():
    floor = PYPROJECT["project"]["requires-python"]
    assert floor == ">=3.11"  # the study reads its grid with tomllib (3.11); no cp310 torch here to test 3.10 with
    assert sys.version_info >= (3, 11)
    setup_py = (ROOT / "setup.py").read_text()
    assert '"py_limited_api": "cp311"' in setup_py


def test_version_has_one_source():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastcka.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", fastcka.__version__)


def test_py_typed_is_package_data():
    assert (ROOT / "fastcka" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["fastcka"]


def test_import_is_light_and_submodules_are_reachable():
    code = ("import sys, fastcka\n"
            "assert 'matplotlib' not in sys.modules, 'import fastcka imported matplotlib'\n"
            "assert 'fastcka.streaming' not in sys.modules, 'streaming imported eagerly'\n"
            "assert {'streaming', 'plot'} <= set(dir(fastcka))\n"
            "assert fastcka.streaming.LinearCKA is __import__('fastcka.streaming').streaming.LinearCKA\n"
            "assert callable(fastcka.plot.cka_heatmap)\n"
            "assert 'matplotlib' not in sys.modules, 'fastcka.plot imported matplotlib before drawing'\n"
            "try:\n    fastcka.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_every_load_in_the_package_is_weights_only():
    """Whatever fastcka reads back (checkpoints, saved states, results) is JSON or torch.load(weights_only=True): no
    call may unpickle code (the --resume test proves the refusal end to end)."""
    bad = []
    for path in (ROOT / "fastcka").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = ast.unparse(node.func)
            if f == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif f in ("pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads", "dill.load"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} ({f})")
    assert not bad, f"loads that may run code: {bad}"


@pytest.mark.parametrize("module, blocked, extra", [
    ("fastcka.integrations.torchmetrics", "torchmetrics", "fastcka[torchmetrics]"),
    ("fastcka.integrations.lightning", "lightning", "fastcka[lightning]"),
    ("fastcka.integrations.hf", "transformers", "fastcka[hf]"),
])
def test_an_integration_without_its_package_names_the_extra(module, blocked, extra):
    code = (f"import sys\nfor m in {[blocked, 'pytorch_lightning']!r}:\n    sys.modules[m] = None  # as if not installed\n"
            f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\nelse:\n    raise SystemExit('imported')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and extra in res.stdout, res.stdout + res.stderr[-1500:]
