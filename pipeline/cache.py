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

STAGES = ("prepare", "tokenize", "train", "evaluate", "export")
UPSTREAM = {"prepare": (), "tokenize": ("prepare",), "train": ("tokenize",), "evaluate": ("train",),
            "export": ("train",)}
KEY_LENGTH = 12
PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent


def stage_keys(config: Config, package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """The key of every stage's output for `config`, in stage order.

    Args:
        config: the resolved config.
        package_dir: the pipeline source whose code the keys hash (a tests' edited copy, say).
    """
    keys: dict[str, str] = {}
    for stage in STAGES:
        parts = {
            "stage": stage,
            "config": _stage_config(config, stage),
            "upstream": {name: keys[name] for name in UPSTREAM[stage]},
            "code": stage_code_version(stage, package_dir),
        }
        if stage == "prepare":
            parts["inputs"] = _data_inputs(config)
        text = json.dumps(parts, sort_keys=True, default=str)
        keys[stage] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]
    return keys


def _stage_config(config: Config, stage: str) -> dict[str, Any]:
    """The config values that `stage` reads, by dotted key; every other key leaves its output alone."""
    flat = config_lib.flatten(config)
    lm = config.task == "lm"
    if stage == "prepare":
        wanted = ["task", "data.tfds", "data.format", "data.text_field", "data.label_field", "data.encoding",
                  "data.document"]
        carved = [s for s in ("validation", "test") if flat[f"data.{s}"] is None or flat["data.synthetic"]]
        if flat["data.synthetic"]:  # its examples come from these keys and the seed
            wanted += ["data.synthetic", "data.synthetic_length", "data.synthetic_examples"]
        wanted += [f"data.{s}_fraction" for s in carved]
        if carved and not lm:
            wanted.append("data.split_seed")  # stratified carving is seeded; an LM's is the stream's tail
    elif stage == "tokenize":
        wanted = ["task", *(k for k in flat if k.startswith("tokenizer."))]
        if not lm:
            wanted.append("train.max_length")
    elif stage == "train":
        unused = ({"train.max_length", "train.buckets"} if lm else
                  {"train.sequence_length", "train.sample_prompt", "train.sample_tokens", "train.max_length"})
        unused |= {"train.worker_timeout"}  # how long to wait for a worker changes no result
        wanted = ["task", *(k for k in flat if k.startswith(("model.", "train.")) and k not in unused)]
        vectors = flat.get("model.pretrained_embeddings")
        if vectors is not None:  # the file's content, not its name, decides the model
            flat = {**flat, "model.pretrained_embeddings": content_hash(Path(vectors))}
    else:
        # evaluate and export read only what train and tokenize wrote, through their keys.
        wanted = ["task"]
    return {key: flat[key] for key in wanted}


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


def stage_code_version(stage: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The installed version plus a hash of the code `stage` can run (`stage_modules`).

    Each module counts as its syntax tree without docstrings: comments never reach the tree, and
    line numbers are not dumped, so neither rewording nor moving code changes the hash.
    """
    return f"{installed_version()}+{_code_hash(stage, Path(package_dir))}"


def stage_modules(stage: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The pipeline modules `stage` can run: `<stage>.py`, the package's `__init__.py`, and every
    pipeline module they import, transitively, by name."""
    return sorted(_parse_closure(stage, Path(package_dir)))


@functools.cache
def _code_hash(stage: str, package_dir: Path) -> str:
    # Cached: keys are computed many times a run, and the source does not change within one.
    digest = hashlib.sha256()
    for name, tree in sorted(_parse_closure(stage, package_dir).items()):
        digest.update(f"{name}\0{_dump_without_docstrings(tree)}\0".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def _dump_without_docstrings(tree: ast.Module) -> str:
    """`ast.dump` of a module with its docstrings removed (the dump has no comments or line numbers)."""
    for node in ast.walk(tree):
        documented = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        if documented and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:]
    return ast.dump(tree)


def _parse_closure(stage: str, package_dir: Path) -> dict[str, ast.Module]:
    """The parsed modules `stage` can run, by name, found by following pipeline imports."""
    trees: dict[str, ast.Module] = {}
    pending = ["__init__", stage]
    while pending:
        name = pending.pop()
        if name not in trees:
            trees[name] = ast.parse((package_dir / f"{name}.py").read_text(encoding="utf-8"))
            pending += _pipeline_imports(trees[name], package_dir)
    return trees


def _pipeline_imports(tree: ast.Module, package_dir: Path) -> list[str]:
    """The pipeline modules a module imports anywhere in it, inside functions too."""
    dotted = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # The package is flat, so a relative import (`from . import x`, `from .x import y`) is from it.
            base = PACKAGE + (f".{node.module}" if node.module else "") if node.level else node.module
            # `from pipeline import x` names a module or a name in `__init__`; only files count.
            dotted += [f"{base}.{alias.name}" for alias in node.names]
    names = {parts[1] for parts in (d.split(".") for d in dotted) if parts[0] == PACKAGE and len(parts) > 1}
    return sorted(n for n in names if (package_dir / f"{n}.py").is_file())


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
    for source in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(source.name.encode("utf-8") + b"\0" + source.read_bytes())
    return f"{installed_version()}+{digest.hexdigest()[:KEY_LENGTH]}"
