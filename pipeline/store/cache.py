"""Content-addressed stage outputs: which key each stage's output folder is filed under.

A stage's key is a hash of everything its output depends on and nothing else:
  - the config keys the stage reads (typed by `load_config`, so `3` and `"3"` are one key),
    leaving out options that do not change the output (where TFDS caches its files, say);
  - its inputs: the content of local data files (not their paths), the name, version and split
    of a TFDS dataset, and the keys of the stages it reads;
  - the pipeline's installed version and a hash of the code the stage can run: its module
    (`pipeline/<stage>.py`) and the pipeline modules it imports, transitively (imports inside
    functions too), as syntax trees without docstrings. So a code change is never served an
    output that older code produced, while a reworded docstring or comment, or an edit to a
    module the stage never imports, re-runs nothing. Code a stage runs without importing it,
    the custom layers of a model it loads, is in the key of the stage that wrote the model.

Equal keys mean interchangeable outputs, so `pipeline run` reuses any stage whose key already
has a finished folder, and a change to `train.epochs` re-runs train, evaluate and export only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline import config as config_lib
from pipeline.config import Config
from pipeline.registry import STAGES

KEY_LENGTH = 12
PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Config keys that name a file whose content, not its name, decides the output.
CONTENT_KEYS = ("model.pretrained_embeddings",)


def stage_keys(config: Config, package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """The key of every stage's output for `config`, in stage order.

    Args:
        config: the resolved config.
        package_dir: the pipeline source whose code the keys hash (a tests' edited copy, say).
    """
    keys: dict[str, str] = {}
    for stage in STAGES:
        parts = {
            "stage": stage.name,
            "config": _stage_config(config, stage.config_keys(config)),
            "upstream": {name: keys[name] for name in stage.reads},
            "code": stage_code_version(stage.module, package_dir),
        }
        if not stage.reads:  # a first stage reads the data itself
            parts["inputs"] = _data_inputs(config)
        text = json.dumps(parts, sort_keys=True, default=str)
        keys[stage.name] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]
    return keys


def _stage_config(config: Config, wanted: list[str]) -> dict[str, Any]:
    """The values of the config keys a stage reads, by dotted key; every other key leaves its output alone."""
    flat = config_lib.flatten(config)
    chosen = {key: flat[key] for key in wanted}
    for key in CONTENT_KEYS:
        if chosen.get(key) is not None:
            chosen[key] = content_hash(Path(chosen[key]))
    return chosen


def _data_inputs(config: Config) -> dict[str, Any]:
    """What identifies the data: TFDS name, version and splits, or the bytes of local files."""
    splits = {s: getattr(config.data, s) for s in ("train", "validation", "test")}
    if config.data.synthetic:
        return {"synthetic": config.data.synthetic}
    if config.data.tfds:
        return {"tfds": config.data.tfds, "version": _tfds_version(config), "splits": splits}
    return {s: None if path is None else content_hash(Path(path)) for s, path in splits.items()}


def _tfds_version(config: Config) -> str:
    import tensorflow_datasets as tfds

    try:
        return str(tfds.builder(config.data.tfds, data_dir=config.data.tfds_data_dir).version)
    except Exception:  # noqa: BLE001 - an unknown name fails in prepare, with its own message
        return "unknown"


def content_hash(path: Path) -> str:
    """sha256 of a file, or of every file below a folder (relative names and bytes).

    A path that does not exist hashes as missing; prepare then fails with the file named.
    """
    if path.is_file():
        stat = path.stat()
        return _file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
            digest.update(content_hash(file).encode("ascii"))
        return digest.hexdigest()
    return f"missing:{path}"


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    # Size and mtime are part of the cache key only, so an edited file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stage_code_version(module: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The installed version plus a hash of the code the stage in `module` (e.g. `stages.train`)
    can run (`stage_modules`).

    Each module counts as its syntax tree without docstrings: comments never reach the tree, and
    line numbers are not dumped, so neither rewording nor moving code changes the hash.
    """
    package_dir = Path(package_dir)
    return f"{installed_version()}+{_code_hash(module, package_dir, _source_signature(package_dir))}"


def stage_modules(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The pipeline modules a stage can run, by dotted name below the package: its own `module`,
    every pipeline module it imports, transitively (inside functions too, relative imports
    resolved), and the `__init__` of every subpackage on the way, which Python runs on import.

    The package's own `__init__` is its public API for notebooks: it forwards to the stages
    without running anything, so it is not part of any stage's code.
    """
    return sorted(_parse_closure(module, Path(package_dir)))


def _source_signature(package_dir: Path) -> tuple:
    """Every source file's name, size and modification time: what the cached hash is valid for."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(package_dir.rglob("*.py")))


@functools.lru_cache(maxsize=64)
def _code_hash(module: str, package_dir: Path, signature: tuple) -> str:
    # Cached by the files' signature: keys are computed many times a run, and parsing is the slow part.
    digest = hashlib.sha256()
    for name, tree in sorted(_parse_closure(module, package_dir).items()):
        digest.update(f"{name}\0{_dump_without_docstrings(tree)}\0".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def _dump_without_docstrings(tree: ast.Module) -> str:
    """`ast.dump` of a module with its docstrings removed (the dump has no comments or line numbers)."""
    for node in ast.walk(tree):
        documented = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        if documented and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:]
    return ast.dump(tree)


def _parse_closure(module: str, package_dir: Path) -> dict[str, ast.Module]:
    """The parsed modules a stage can run, by dotted name, found by following pipeline imports."""
    trees: dict[str, ast.Module] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in trees:
            continue
        path = _source(name, package_dir)
        trees[name] = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        pending += _pipeline_imports(trees[name], package, package_dir)
        pending += _enclosing_packages(name)
    return trees


def _source(name: str, package_dir: Path) -> Path:
    """The file of a dotted module name below the package: `a/b.py` or `a/b/__init__.py`."""
    base = package_dir.joinpath(*name.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def _is_module(name: str, package_dir: Path) -> bool:
    return bool(name) and _source(name, package_dir).is_file()


def _enclosing_packages(name: str) -> list[str]:
    """`a` and `a.b` for `a.b.c`: the subpackages whose `__init__` importing `a.b.c` runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _pipeline_imports(tree: ast.Module, package: str, package_dir: Path) -> list[str]:
    """The pipeline modules a module imports anywhere in it, inside functions too, by dotted name
    below the package. `package` is the module's own package, against which relative imports resolve."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            found += [_below_package(b) for b in bases]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = _below_package(node.module or "")
            if base is None:
                continue
            # `from a import b` imports module `a.b` when there is one, else the name `b` of `a`.
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                found.append(child if _is_module(child, package_dir) else base)
    return sorted({name for name in found if name and _is_module(name, package_dir)})


def _below_package(dotted: str) -> str | None:
    """`a.b` for `pipeline.a.b`, "" for `pipeline` itself, None outside the package."""
    if dotted == PACKAGE:
        return ""
    return dotted[len(PACKAGE) + 1:] if dotted.startswith(PACKAGE + ".") else None


@functools.lru_cache(maxsize=1)
def installed_version() -> str:
    """The installed version of the pipeline package ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The installed version plus a hash of every source file: the `pipeline_version` run tag.

    Stage keys use `stage_code_version` instead, which hashes only what a stage can run.
    """
    digest = hashlib.sha256()
    for source in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE_DIR).as_posix().encode("utf-8") + b"\0" + source.read_bytes())
    return f"{installed_version()}+{digest.hexdigest()[:KEY_LENGTH]}"
