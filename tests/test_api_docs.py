"""docs/api.md is generated from the docstrings by docs/gen_api.py: this test fails when it is stale."""

import difflib
import importlib.util
import types
from pathlib import Path

import fastcka

ROOT = Path(__file__).resolve().parents[1]


def _gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_md_is_current():
    want = _gen_api().render()
    have = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    if have != want:
        diff = "\n".join(list(difflib.unified_diff(have.splitlines(), want.splitlines(), "docs/api.md (committed)",
                                                   "docs/api.md (from the source)", lineterm="", n=1))[:40])
        raise AssertionError("docs/api.md is stale: run `python docs/gen_api.py` and commit it\n" + diff)


def test_every_public_name_has_an_entry():
    gen = _gen_api()
    names = gen.documented_names(gen.render())
    exported = [n for n in fastcka.__all__ if n != "__version__" and not isinstance(getattr(fastcka, n), types.ModuleType)]
    assert exported and not [n for n in exported if n not in names]
    assert {"LinearCKA", "MinibatchCKA", "cka_heatmap", "TrainConfig", "train"} <= names
