"""The code behind a stage's artifact, as hashes: part of its cache key, so editing the code reruns the stage.

A stage's code is its module and every module of the `backends`, `stages` and `targets` packages that it imports,
directly or through another (imports inside functions included, package `__init__`s too), plus the
scripts it runs as programs and the backends' modules it reaches through the registry (`Stage.scripts`).
The engine (`pipeline/`) is left out: its schema reaches the keys through the config values themselves, and
its logging, locking and file handling do not change what a stage computes; pipeline/core/numerics.py, which
describes the files' arithmetic in their records, is followed. Each file is hashed as its syntax tree without
docstrings, so comments, docstrings and formatting do not count. Nothing is imported: the files are parsed.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the folder holding pipeline/, stages/ and targets/
FOLLOWED = ("backends", "stages", "targets", "pipeline.core.numerics")  # packages, or one module


def code_fingerprint(module: str, scripts: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: hash} of every file in the code of `module` (and of `scripts`), sorted by path."""
    seen: dict[str, str] = {}
    todo = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)] + list(scripts)
    while todo:
        name = todo.pop()
        path = _source(name)
        if path is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        digest, imported = _parse(path)
        seen[rel] = digest
        todo.extend(imported)
    return dict(sorted(seen.items()))


def data_fingerprint(paths: tuple[str, ...]) -> dict[str, str]:
    """{relative path: hash of its bytes} of the data files a stage reads (Stage.data)."""
    return {path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest() for path in paths}


def code_digest(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{path}:{digest}\n" for path, digest in files.items()).encode()).hexdigest()


def _source(module: str) -> Path | None:
    """The file of a followed module, or None (the engine, the standard library, third-party packages)."""
    parts = module.split(".")
    if not any(module == f or module.startswith(f + ".") for f in FOLLOWED):
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _parse(path: Path) -> tuple[str, tuple[str, ...]]:
    """The hash of a file's syntax tree without docstrings, and the modules it imports (with their packages)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path)
    imported: list[str] = []
    for node in ast.walk(tree):
        _drop_docstring(node)
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            imported.append(base)
            imported += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
    with_packages = {".".join(name.split(".")[:i]) for name in imported for i in range(1, name.count(".") + 2)}
    digest = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
    return digest, tuple(sorted(with_packages))


def _package_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1])  # the package a module (or a package's __init__) belongs to


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _drop_docstring(node: ast.AST) -> None:
    body = getattr(node, "body", None)
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
            and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        node.body = body[1:] or [ast.Pass()]
