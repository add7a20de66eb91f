"""Readers that turn a user's files into `(text, label)` examples (TFDS splits: `pipeline.data.tfds_reader`).

Every reader returns a `Examples` value or raises `DataError` with a one-line message that names
the file (and line, where there is one) and says how to fix it. Labels are kept as stripped,
non-blank strings here; the prepare stage maps them to ids. Texts that are blank after stripping
are skipped and counted. No text or label holds NUL or an unpaired surrogate.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import charset_normalizer

from pipeline.errors import DataError

log = logging.getLogger(__name__)
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# NUL marks a binary file or a wrong encoding; an unpaired surrogate (a JSON escape such as
# \ud800, a UTF-7 file, a file name that is not UTF-8) cannot be written back as UTF-8.
UNUSABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass
class Examples:
    """Examples of one split, in file order."""

    texts: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    skipped_blank: int = 0
    # How many files were read in each encoding (with data.encoding=auto, the detected ones).
    encodings: dict[str, int] = field(default_factory=dict)

    def count_encoding(self, encoding: str) -> None:
        self.encodings[encoding] = self.encodings.get(encoding, 0) + 1

    def add(self, text: str, label: str | None) -> None:
        if text.strip():
            self.texts.append(text)
            self.labels.append(label)
        else:
            self.skipped_blank += 1


def resolve_format(path: Path, fmt: str, task: str) -> str:
    """The concrete format for `fmt="auto"`: by suffix, a folder, or the task's usual text form."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[path.suffix.lower()]
    return "text" if task == "lm" else "label_text"


def read_local(
    path: str | Path,
    fmt: str,
    *,
    task: str = "sentiment",
    encoding: str = "utf-8",
    text_field: str = "text",
    label_field: str = "label",
    document: str = "file",
) -> Examples:
    """Read one split from a local file or folder.

    Args:
        path: the file, or for `folder` the directory holding one sub-folder per label.
        fmt: `label_text`, `csv`, `tsv`, `jsonl`, `text`, `folder`, or `auto` (by suffix).
        task: `sentiment` needs labels; `lm` reads texts only.
        encoding: the text encoding of every file read, or `auto`: UTF-8, and for a file that is
            not valid UTF-8 the encoding charset-normalizer detects (logged, and counted in
            the result's `encodings`).
        text_field, label_field: column or key names for csv, tsv and jsonl.
        document: for `text`, whether a document is the whole file or one line.

    Returns:
        The split's examples; labels are `None` for `task="lm"`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the data.train/validation/test paths")
    fmt = resolve_format(path, fmt, task)
    if fmt == "folder":
        return _read_folder(path, encoding, task)
    if path.is_dir():
        raise DataError(f"{path} is a folder; set data.format=folder or point at a file")
    text, used = decode_file(path, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty; give a file with at least one example")
    examples = _parse(text, path, fmt, task, text_field, label_field, document)
    examples.count_encoding(used)
    return examples


def _parse(text: str, path: Path, fmt: str, task: str, text_field: str, label_field: str, document: str) -> Examples:
    if fmt == "text":
        return _read_text(text, document, task, path)
    fields = (text_field, None if task == "lm" else label_field)
    if fmt == "label_text":
        return _read_label_text(text, task)
    if fmt in ("csv", "tsv"):
        return _read_delimited(text, path, "," if fmt == "csv" else "\t", *fields)
    if fmt == "jsonl":
        return _read_jsonl(text, path, *fields)
    raise DataError(f"{path}: unknown data.format {fmt!r}")


def decode_file(path: Path, encoding: str) -> tuple[str, str]:
    """The file's text with universal newlines and no BOM, and the encoding it was read in.

    `encoding="auto"` reads UTF-8, and a file that is not (or that holds NUL bytes, as UTF-16
    does) in the encoding charset-normalizer finds. A file that cannot be read raises a
    `DataError` naming the bad line where there is one.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if encoding == "auto":
        encoding = _detect_encoding(raw, path)
    fix = "set data.encoding to the file's encoding (e.g. latin-1) or re-save it as UTF-8"
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(f"{path}: data.encoding {encoding!r} is not a text codec; try utf-8 or latin-1") from None
    except UnicodeDecodeError as err:
        line = _line_at(err.object, err.start, encoding)  # utf-8-sig counts from after the BOM
        raise DataError(f"{path}:{line}: bytes not valid in data.encoding={encoding}; {fix}") from None
    except UnicodeError:  # codecs such as punycode fail without saying where
        raise DataError(f"{path}: bytes not valid in data.encoding={encoding}; {fix}") from None
    if raw.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig"):
        raise DataError(f"{path}:1: starts with a UTF-8 byte-order mark, but data.encoding={encoding}; {fix}")
    # A leading U+FEFF is a byte-order mark in every Unicode encoding, never part of the text.
    text = _universal_newlines(text).removeprefix("\ufeff")
    bad = UNUSABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        if bad.group() == "\x00":
            raise DataError(f"{path}:{line}: NUL byte in text; is this a binary file, or UTF-16 (set data.encoding)?")
        raise DataError(f"{path}:{line}: {_describe(bad.group())} in text; {fix}")
    return text, encoding


def _detect_encoding(raw: bytes, path: Path) -> str:
    """`utf-8` for valid UTF-8 without NUL bytes, else the encoding charset-normalizer finds."""
    try:
        raw.decode("utf-8")
        if b"\x00" not in raw:
            return "utf-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(raw).best()
    if best is None:
        # Nothing fits: decoding as UTF-8 then names the first bad line (or the NUL byte).
        return "utf-8"
    log.warning("%s: not valid UTF-8; read as %s (detected; set data.encoding to choose)", path, best.encoding)
    return best.encoding


def _universal_newlines(text: str) -> str:
    """`text` with \\r\\n and lone \\r line ends read as \\n, as Python's text mode reads files."""
    return io.StringIO(text, newline=None).read()


def _line_at(data: bytes, offset: int, encoding: str) -> int:
    """The line holding byte `offset` of `data`, counted the way `decode_file` counts lines."""
    try:
        before = data[:offset].decode(encoding)
    except UnicodeError:  # a stateful codec cut mid-sequence: count the ASCII line ends
        before = data[:offset].decode("latin-1")
    return _universal_newlines(before).count("\n") + 1


def _describe(character: str) -> str:
    return "a NUL character" if character == "\x00" else f"an unpaired surrogate (\\u{ord(character):04x})"


def _read_text(text: str, document: str, task: str, path: Path) -> Examples:
    if task != "lm":
        raise DataError(
            f"{path}: data.format=text has no labels; sentiment needs label_text, csv, tsv, jsonl or folder"
        )
    examples = Examples()
    if document == "line":
        for line in text.split("\n"):
            examples.add(line, None)
    else:
        examples.add(text, None)
    return examples


def _read_label_text(text: str, task: str) -> Examples:
    examples = Examples()
    for line in text.split("\n"):
        parts = line.split(None, 1)
        if parts:
            # A language model learns from the text alone, as it does from csv, tsv and jsonl.
            examples.add(parts[1] if len(parts) > 1 else "", None if task == "lm" else parts[0])
    return examples


def _read_delimited(text: str, path: Path, delimiter: str, text_field: str, label_field: str | None) -> Examples:
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    for wanted, key in ((text_field, "data.text_field"), (label_field, "data.label_field")):
        if wanted is not None and wanted not in columns:
            raise DataError(f"{path}:1: no column {wanted!r} (columns: {_listing(columns)}); set {key} to one of them")
    examples = Examples()
    try:
        for row in reader:
            body = row.get(text_field)
            label = row.get(label_field) if label_field else None
            where = f"{path}:{reader.line_num}"
            if body is None or (label_field and label is None):
                raise DataError(f"{where}: row has fewer fields than the header; fix or delete the row")
            examples.add(body, _label(label, where, label_field) if label_field else None)
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed {'CSV' if delimiter == ',' else 'TSV'} ({err})") from None
    return examples


def _read_jsonl(text: str, path: Path, text_field: str, label_field: str | None) -> Examples:
    examples = Examples()
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            examples.add(*_jsonl_example(line, f"{path}:{number}", text_field, label_field))
    return examples


def _jsonl_example(line: str, where: str, text_field: str, label_field: str | None) -> tuple[str, str | None]:
    """The text and label of one JSONL line; `where` is the `file:line` that messages name."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg}); each line must be one object") from None
    except (ValueError, RecursionError):  # an integer past Python's 4300 digits, nesting past its stack
        raise DataError(f"{where}: JSON nested too deeply or with too long a number; simplify the line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON object is needed, got {type(record).__name__}")
    for wanted, key in ((text_field, "data.text_field"), (label_field, "data.label_field")):
        if wanted is not None and wanted not in record:
            raise DataError(f"{where}: no key {wanted!r} (keys: {_listing(record)}); set {key} to one of them")
    body = record[text_field]
    if not isinstance(body, str):
        raise DataError(f"{where}: {text_field!r} must be a string, got {type(body).__name__}")
    bad = UNUSABLE.search(body)
    if bad:
        raise DataError(f"{where}: {text_field!r} holds {_describe(bad.group())}; remove it")
    return body, _jsonl_label(record[label_field], where, label_field) if label_field else None


def _jsonl_label(value: object, where: str, label_field: str) -> str:
    # JSON has one number type, so 1.0 is the label 1; but 0.5, NaN or true name no class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        shown = type(value).__name__ if isinstance(value, (dict, list)) else json.dumps(value)
        raise DataError(f"{where}: {label_field!r} must be a string or an integer, got {shown}")
    return _label(str(value), where, label_field)


def _label(value: str, where: str, label_field: str) -> str:
    """`value` stripped, if it can be a label; `where` is the `file:line` that messages name."""
    label = value.strip()
    if not label:
        raise DataError(f"{where}: empty {label_field!r}; every row needs a label")
    bad = UNUSABLE.search(label)
    if bad:
        raise DataError(f"{where}: {label_field!r} holds {_describe(bad.group())}; remove it")
    return label


def _listing(names: Iterable) -> str:
    """Column or key names for a one-line message: the first few, odd characters escaped."""
    shown = [name if name.isprintable() and len(name) <= 40 else repr(name[:40]) for name in map(str, names)]
    return ", ".join(shown[:8]) + (", ..." if len(shown) > 8 else "")


def _read_folder(path: Path, encoding: str, task: str) -> Examples:
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if task == "lm":
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        groups = [(None, files)]
    else:
        groups = [(_folder_label(d), sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")))
                  for d in folders]
    examples = Examples()
    for label, files in groups:
        for file in files:
            text, used = decode_file(file, encoding)
            examples.add(text, label)
            examples.count_encoding(used)
    if not examples.texts:
        raise DataError(
            f"{path}: no examples found; data.format=folder needs one sub-folder per label, one file per example"
        )
    return examples


def _folder_label(folder: Path) -> str:
    """The label a class folder stands for: its name, stripped."""
    label = folder.name.strip()
    if not label or UNUSABLE.search(label):
        raise DataError(f"{folder}: a folder name must be a label, not blank and in UTF-8; rename the folder")
    return label
