"""Render fastcka's public API (signatures and docstrings) into docs/api.md.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is not what this script writes

The Python API is read from the source with ``ast`` (no import, so optional extras such as lightning need not be
installed, and nothing depends on the import order); the command-line reference is argparse's ``--help`` of
``fastcka.cli``'s parser, at a fixed width. tests/test_api_docs.py runs the check in the normal test run, so the file
cannot go stale: after changing a public signature or docstring, run the script and commit docs/api.md.

What is public: a module's ``__all__`` (or, without one, its names that do not start with ``_``); for a class, its
docstring, constructor (or dataclass fields) and the methods and properties whose names do not start with ``_``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

# The modules a user imports from, in reading order (a pair: the module and the names to show, instead of its
# __all__). Everything in fastcka.__all__ must be documented in one of them (tests/test_api_docs.py checks it).
MODULES = [
    "fastcka.functional",
    "fastcka.fourier",
    "fastcka.streaming",
    "fastcka.monitor",
    "fastcka.compare",
    "fastcka.capture",
    "fastcka.plot",
    "fastcka.reference",
    ("fastcka._ops", ["ops", "OP_NAMES"]),
    "fastcka.integrations.lightning",
    "fastcka.integrations.hf",
    "fastcka.integrations.torchmetrics",
    "fastcka.grok.train",
    "fastcka.grok.detect",
]
CLI_COMMANDS = ["grok", "study", "compare"]
HELP_WIDTH = "100"


def _source_path(module: str) -> Optional[Path]:
    base = ROOT.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _literal_all(tree: ast.Module) -> Optional[list]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _doc(node: ast.AST) -> str:
    text = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    return text.strip() if text else "*(no docstring)*"


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, name: Optional[str] = None, drop_self: bool = False) -> str:
    args = node.args
    if drop_self and (args.posonlyargs or args.args):
        args = ast.arguments(posonlyargs=args.posonlyargs[1:] if args.posonlyargs else [],
                             args=args.args if args.posonlyargs else args.args[1:], vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults)
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{name or node.name}({ast.unparse(args)}){ret}"


def _decorators(node: ast.AST) -> list:
    return [ast.unparse(d) for d in getattr(node, "decorator_list", [])]


def _render_function(node: ast.FunctionDef | ast.AsyncFunctionDef, qual: str, level: str) -> list:
    return [f"{level} `{qual}`", "", "```python", "def " + _signature(node), "```", "", _doc(node), ""]


def _render_class(node: ast.ClassDef, qual: str) -> list:
    bases = ", ".join(ast.unparse(b) for b in node.bases)
    lines = [f"### `{qual}`", "", "```python", f"class {node.name}" + (f"({bases})" if bases else ""), "```", "",
             _doc(node), ""]
    is_dataclass = any(d.split("(")[0].endswith("dataclass") for d in _decorators(node))
    if is_dataclass:
        fields = [n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
        if fields:
            lines += ["Fields:", "", "```python"]
            lines += [f"{ast.unparse(f.target)}: {ast.unparse(f.annotation)}"
                      + (f" = {ast.unparse(f.value)}" if f.value is not None else "") for f in fields]
            lines += ["```", ""]
    for item in node.body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        decos = _decorators(item)
        if item.name == "__init__" and not is_dataclass:
            lines += ["```python", _signature(item, name=node.name, drop_self=True), "```", "",
                      *([ast.get_docstring(item, clean=True), ""] if ast.get_docstring(item) else [])]
        elif not item.name.startswith("_"):
            if "property" in decos:
                ret = f": {ast.unparse(item.returns)}" if item.returns is not None else ""
                lines += [f"#### `{qual}.{item.name}` (property)", "", "```python", f"{item.name}{ret}", "```", "",
                          _doc(item), ""]
            else:
                static = "staticmethod" in decos or "classmethod" in decos
                lines += [f"#### `{qual}.{item.name}`", "", "```python",
                          "def " + _signature(item, drop_self=not static or "classmethod" in decos), "```", "",
                          _doc(item), ""]
    return lines


def _assignment(source: str, tree: ast.Module, name: str) -> Optional[list]:
    """A module-level ``name = ...``: its source and the comment lines right above it."""
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].lstrip().startswith("#"):
                above.insert(0, lines[i].lstrip("# ").rstrip())
                i -= 1
            return ["```python", ast.get_source_segment(source, node) or name, "```", "", *([" ".join(above), ""]
                                                                                            if above else [])]
    return None


def _name(entry: str | tuple) -> str:
    return entry if isinstance(entry, str) else entry[0]


def render_module(entry: str | tuple) -> list:
    module = _name(entry)
    path = _source_path(module)
    if path is None:  # a module listed above that does not exist (yet)
        return []
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    public = list(entry[1]) if isinstance(entry, tuple) else _literal_all(tree)
    if public is None:
        public = [name for name in defs if not name.startswith("_")]
    lines = [f"## `{module}`", "", _doc(tree), ""]
    for name in public:
        node = defs.get(name)
        qual = f"{module}.{name}"
        if isinstance(node, ast.ClassDef):
            lines += _render_class(node, qual)
        elif node is not None:
            lines += _render_function(node, qual, "###")
        else:
            lines += [f"### `{qual}`", "", *(_assignment(source, tree, name) or ["*(not found in the source)*", ""])]
    return lines


def render_cli() -> list:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fastcka.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [("", parser)] + [(name, sub.choices[name]) for name in CLI_COMMANDS if name in sub.choices]
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps at the terminal's width: fix it
    try:
        helps = [(name, p.format_help().rstrip()) for name, p in parsers]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    lines = ["## Command line", ""]
    for name, text in helps:
        lines += ([f"### `fastcka {name}`", ""] if name else []) + ["```text", text, "```", ""]
    return lines


def render() -> str:
    """The whole of docs/api.md."""
    present = [m for m in MODULES if _source_path(_name(m)) is not None]
    lines = ["# fastcka API reference", "",
             "Generated by `python docs/gen_api.py` from the docstrings and signatures in the source; do not edit by "
             "hand (`tests/test_api_docs.py` fails when this file is stale). Everything listed in `fastcka.__all__` "
             "is also importable from `fastcka` itself; `fastcka.streaming`, `fastcka.plot` and the other "
             "submodules are attributes of the package after `import fastcka`.", "", "Contents:", ""]
    lines += [f"- [`{_name(m)}`](#{_name(m).replace('.', '')})" for m in present]
    lines += ["- [Command line](#command-line)", ""]
    for m in present:
        lines += render_module(m)
    lines += render_cli()
    text = "\n".join(lines)
    return text.rstrip() + "\n"


def documented_names(text: str) -> set:
    """Names that have a heading of their own in a rendered api.md."""
    names = set()
    for line in text.splitlines():
        if line.startswith("### `") or line.startswith("#### `"):
            names.add(line.split("`")[1].split(".")[-1])
    return names


def main(argv: Optional[Iterable[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale instead of writing it")
    args = ap.parse_args(list(argv) if argv is not None else None)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
