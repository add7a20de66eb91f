"""Hostile input: a reader returns well-formed examples or raises `DataError` naming file and line.

Hypothesis feeds every local format random bytes, random encodings, very long lines, NUL bytes,
CRLF and lone CR line ends, BOM-prefixed files, quoted CSV fields with embedded newlines and JSONL
with missing or extra fields. Whatever a reader returns must then survive the next stages: the
prepare stage writes it and reads it back unchanged, and SentencePiece trains on it and encodes it.
The last tests check that no user file is loaded unsafely: YAML, Keras models, pickles.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import csv
import io
import json
import operator
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import Config, load_config
from pipeline.data import splits
from pipeline.data.readers import Examples, read_local
from pipeline.errors import ConfigError, DataError, TokenizerError
from pipeline.stages import prepare, tokenization
from tests.conftest import ROOT

PIPELINE_DIR = ROOT / "pipeline"
# 60 examples a property keep the file at seconds; no deadline, as a 600 000-character line on a
# busy two-core machine can pass hypothesis' default 200 ms.
FAST = settings(max_examples=60, deadline=None)
LINE_ENDS = ("\n", "\r\n", "\r")
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252", "shift_jis", "utf-7", "ascii")
# Names a user might type for data.encoding, including aliases, non-text codecs and nonsense.
READ_ENCODINGS = (*ENCODINGS, "U8", "UTF_8", "idna", "punycode", "rot13", "base64", "no-such-codec")
SUFFIXES = {"label_text": ".txt", "csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "text": ".txt"}
# Characters no text or label may hold: NUL, and unpaired surrogates (JSON can spell them \ud800).
UNUSABLE = re.compile("[\x00\ud800-\udfff]")


def universal(text: str) -> str:
    """`text` with CRLF and lone CR line ends read as LF, as the readers read files."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def one_line(text: str) -> str:
    """`text` with its line ends taken out."""
    return universal(text).replace("\n", "")


# Characters that break naive readers: every kind of line end, BOMs, quotes, separators, JSON syntax.
TRICKY = ["\r", "\n", "\r\n", "\ufeff", "\u2028", "\x85", "\x0b", "\x0c", "\x1c", '"', "'", ",", "\t", " ",
          "\\", "{", "[", "é", "\u00a0", "\u3000", "²", "😀"]
clean_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6)
clean_strings = st.lists(clean_text | st.sampled_from(TRICKY), max_size=10).map("".join)
strings = st.lists(st.text(max_size=6) | st.sampled_from([*TRICKY, "\x00", "\ud800", "\udfff"]), max_size=10).map(
    "".join
)
long_lines = st.builds(
    operator.mul,
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n"), min_size=1, max_size=3),
    st.integers(1_000, 200_000),
)
# Labels that have tripped label handling: digits that int() refuses, ties like "1" and "01".
labels = st.sampled_from(["0", "1", "01", "2", "10", "-1", "pos", "neg", "²", "--1", "٣", "1_0"]) | st.text(
    st.characters(exclude_categories=("Z", "C")), min_size=1, max_size=4
)


def lines_of(line: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(line, max_size=8).map("\n".join)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(["text", "label", "id"]) | strings, labels | json_values, max_size=4)
json_lines = st.builds(json.dumps, records | json_values, ensure_ascii=st.booleans())
deep_json = st.integers(1_000, 100_000).map(lambda n: "[" * n + "]" * n)
long_number = st.integers(4_000, 50_000).map(lambda n: '{"text": "a", "label": ' + "9" * n + "}")


@st.composite
def delimited_documents(draw, delimiter: str) -> str:
    """A header, rows of any width (quoted newlines included), and a possibly torn last line."""
    usual = st.sampled_from([["text", "label"], ["label", "text", "id"], ["text"]])
    header = draw(usual | st.lists(strings, max_size=3))
    rows = draw(st.lists(st.lists(strings | labels | long_lines, max_size=len(header) + 1), max_size=6))
    out = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    csv.writer(out, delimiter=delimiter, lineterminator="\n", quoting=quoting).writerows([header, *rows])
    return out.getvalue() + draw(strings)


DOCUMENTS = {
    "label_text": lines_of(st.builds("{} {}".format, labels, strings) | strings | long_lines),
    "csv": delimited_documents(","),
    "tsv": delimited_documents("\t"),
    "jsonl": lines_of(json_lines | strings | deep_json | long_number),
    "text": lines_of(strings | long_lines),
}


def encoded(document: str, line_end: str, bom: bool, encoding: str) -> bytes:
    data = document.replace("\n", line_end).encode(encoding, errors="replace")
    return codecs.BOM_UTF8 + data if bom else data


def file_bytes(documents: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A document in any encoding, with any line end and maybe a UTF-8 BOM; or plain random bytes."""
    return st.binary(max_size=400) | st.builds(
        encoded, documents, st.sampled_from(LINE_ENDS), st.booleans(), st.sampled_from(ENCODINGS)
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for the whole module: hypothesis runs a test's examples one after the other, each
    overwriting the last one's files, while a function-scoped tmp_path would be shared by them all."""
    return tmp_path_factory.mktemp("hostile")


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def assert_well_formed(examples: Examples, task: str) -> None:
    """Texts and labels the next stages can use: non-blank strings that UTF-8 can hold, no NUL."""
    assert len(examples.texts) == len(examples.labels)
    for text, label in zip(examples.texts, examples.labels, strict=True):
        assert isinstance(text, str) and text.strip() and not UNUSABLE.search(text), repr(text[:80])
        if task == "lm":
            assert label is None
        else:
            assert isinstance(label, str) and label and label == label.strip(), repr(label)
            assert not UNUSABLE.search(label), repr(label)


def assert_names_file_and_line(message: str, path: Path) -> None:
    """One line that starts with the file (or a file in the folder); a line number lies inside it."""
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(str(path)), message
    line = re.match(r":(\d+):", message[len(str(path)) :])
    if line and path.is_file():
        raw = path.read_bytes()
        # Each line end, in every encoding used here, holds a \n or \r byte: an upper bound.
        assert 1 <= int(line.group(1)) <= raw.count(b"\n") + raw.count(b"\r") + 1, message


def assert_reads_or_refuses(path: Path, fmt: str, **options) -> None:
    """`read_local` returns well-formed examples or raises a `DataError` that names the file.

    Any other exception escapes and fails the test.
    """
    try:
        examples = read_local(path, fmt, **options)
    except DataError as err:
        assert_names_file_and_line(str(err), path)
    else:
        assert_well_formed(examples, options.get("task", "sentiment"))


@pytest.mark.parametrize("fmt", [*DOCUMENTS, "auto"])
@FAST
@given(
    data=st.data(),
    task=st.sampled_from(["sentiment", "lm"]),
    encoding=st.sampled_from(READ_ENCODINGS),
    document=st.sampled_from(["file", "line"]),
)
def test_a_reader_returns_well_formed_examples_or_a_data_error(scratch, fmt, data, task, encoding, document):
    kind = data.draw(st.sampled_from(sorted(DOCUMENTS))) if fmt == "auto" else fmt
    suffix = data.draw(st.sampled_from([SUFFIXES[kind], ".json", ""])) if fmt == "auto" else SUFFIXES[kind]
    path = write(scratch / f"train{suffix}", data.draw(file_bytes(DOCUMENTS[kind])))
    assert_reads_or_refuses(path, fmt, task=task, encoding=encoding, document=document)


folder_names = (
    st.binary(min_size=1, max_size=8)
    # A line end in a folder name would split the message that names it.
    .filter(lambda name: not set(name) & set(b"/\x00\n\r") and name not in (b".", b".."))
    .map(os.fsdecode)  # bytes that are not UTF-8 come back as lone surrogates
)


@FAST
@given(
    tree=st.dictionaries(folder_names, st.lists(file_bytes(DOCUMENTS["text"]), max_size=3), max_size=4),
    task=st.sampled_from(["sentiment", "lm"]),
    encoding=st.sampled_from(ENCODINGS),
)
def test_folder_reader_returns_well_formed_examples_or_a_data_error(scratch, tree, task, encoding):
    root = fresh_folder(scratch / "folder")
    for label, files in tree.items():
        (root / label).mkdir()
        for number, raw in enumerate(files):
            write(root / label / f"{number}.txt", raw)
    assert_reads_or_refuses(root, "folder", task=task, encoding=encoding)


# One valid line per format (and the header, if it has one), to place a fault at a known line.
VALID_LINES = {
    "label_text": [None, "1 a fine film"],
    "csv": ["text,label", '"a fine, long film",1'],
    "tsv": ["text\tlabel", "a fine film\t1"],
    "jsonl": [None, '{"text": "a fine film", "label": 1}'],
    "text": [None, "a fine film"],
}


@pytest.mark.parametrize("fmt", sorted(VALID_LINES))
@FAST
@given(
    count=st.integers(1, 6),
    data=st.data(),
    line_end=st.sampled_from(LINE_ENDS),
    bad=st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80"]),
    bom=st.booleans(),
)
def test_a_bad_byte_is_reported_at_its_line(scratch, fmt, count, data, line_end, bad, bom):
    header, line = VALID_LINES[fmt]
    lines = [text.encode() for text in ([header] if header else []) + [line] * count]
    where = data.draw(st.integers(0, len(lines) - 1))
    cut = data.draw(st.integers(0, len(lines[where])))
    lines[where] = lines[where][:cut] + bad + lines[where][cut:]
    path = write(scratch / f"bad{SUFFIXES[fmt]}", (codecs.BOM_UTF8 if bom else b"") + line_end.encode().join(lines))
    with pytest.raises(DataError) as caught:
        read_local(path, fmt, task="lm" if fmt == "text" else "sentiment")
    assert str(caught.value).startswith(f"{path}:{where + 1}: "), str(caught.value)


@st.composite
def bom_files(draw) -> tuple[bytes, bytes, str]:
    """An ASCII label_text file without and with a byte-order mark, and an encoding that reads the former."""
    lines = draw(st.lists(st.builds("{} {}".format, st.sampled_from(["0", "1", "pos"]), st.text("ab ,.", min_size=1))))
    plain = "\n".join(["1 first", *lines])
    bom, codec, readers = draw(st.sampled_from([
        (codecs.BOM_UTF8, "utf-8", ["utf-8", "utf-8-sig", "U8", "UTF_8", "latin-1", "cp1252", "shift_jis", "ascii"]),
        (codecs.BOM_UTF16_LE, "utf-16-le", ["utf-16", "utf-16-le", "UTF_16LE"]),
        (codecs.BOM_UTF32_LE, "utf-32-le", ["utf-32", "utf-32-le"]),
    ]))
    return plain.encode(codec), bom + plain.encode(codec), draw(st.sampled_from(readers))


@FAST
@given(files=bom_files())
def test_a_byte_order_mark_is_dropped_or_reported_at_line_1(scratch, files):
    plain, with_bom, encoding = files
    expected = read_local(write(scratch / "plain.txt", plain), "label_text", encoding=encoding)
    path = write(scratch / "bom.txt", with_bom)
    try:
        examples = read_local(path, "label_text", encoding=encoding)
    except DataError as err:
        assert str(err).startswith(f"{path}:1: "), str(err)
    else:
        assert (examples.texts, examples.labels) == (expected.texts, expected.labels)


@pytest.mark.parametrize("fmt, delimiter", [("csv", ","), ("tsv", "\t")])
@FAST
@given(
    rows=st.lists(st.tuples((clean_strings | long_lines).map(universal), labels), min_size=1, max_size=8),
    line_end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_delimited_files_read_back_what_was_written(scratch, fmt, delimiter, rows, line_end, bom, quoting):
    # The writer quotes fields that hold its own line end only (before Python 3.12), so it writes
    # \n everywhere and `encoded` turns each one, quoted ones included, into `line_end`.
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n", quoting=quoting).writerows([("text", "label"), *rows])
    path = write(scratch / f"train.{fmt}", encoded(out.getvalue(), line_end, bom, "utf-8"))
    examples = read_local(path, fmt)
    expected = [(text, label) for text, label in rows if text.strip()]
    assert list(zip(examples.texts, examples.labels, strict=True)) == expected


@FAST
@given(
    rows=st.lists(st.tuples(labels, clean_strings.map(one_line)), min_size=1),
    separator=st.sampled_from([" ", "\t", "  ", "\u3000"]),
    line_end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
)
def test_label_text_reads_back_what_was_written(scratch, rows, separator, line_end, bom):
    document = "\n".join(f"{label}{separator}{text}" for label, text in rows)
    examples = read_local(write(scratch / "train.txt", encoded(document, line_end, bom, "utf-8")), "label_text")
    expected = [(text.lstrip(), label) for label, text in rows if text.strip()]
    assert list(zip(examples.texts, examples.labels, strict=True)) == expected


@FAST
@given(
    lines=st.lists((clean_strings | long_lines).map(one_line), min_size=1),
    line_end=st.sampled_from(LINE_ENDS),
    bom=st.booleans(),
)
def test_plain_text_reads_back_what_was_written(scratch, lines, line_end, bom):
    document = "\n".join(["first", *lines])  # a U+FEFF that starts a file is a byte-order mark, not text
    path = write(scratch / "corpus.txt", encoded(document, line_end, bom, "utf-8"))
    assert read_local(path, "text", task="lm", document="line").texts == [
        line for line in document.split("\n") if line.strip()
    ]
    assert read_local(path, "text", task="lm").texts == [document]


jsonl_records = st.lists(
    st.fixed_dictionaries(
        {"text": clean_strings | long_lines, "label": labels | st.integers()},
        optional={"id": st.integers(), "meta": json_values},
    ),
    min_size=1,
    max_size=8,
)


@FAST
@given(records=jsonl_records, line_end=st.sampled_from(LINE_ENDS), bom=st.booleans(), ensure_ascii=st.booleans())
def test_jsonl_reads_back_what_was_written_ignoring_extra_keys(scratch, records, line_end, bom, ensure_ascii):
    document = "\n".join(json.dumps(record, ensure_ascii=ensure_ascii) for record in records)
    examples = read_local(write(scratch / "train.jsonl", encoded(document, line_end, bom, "utf-8")), "jsonl")
    expected = [(r["text"], str(r["label"])) for r in records if r["text"].strip()]
    assert list(zip(examples.texts, examples.labels, strict=True)) == expected


@FAST
@given(
    records=jsonl_records,
    data=st.data(),
    line_end=st.sampled_from(LINE_ENDS),
    missing=st.sampled_from(["text", "label"]),
)
def test_jsonl_missing_key_is_reported_at_its_line(scratch, records, data, line_end, missing):
    where = data.draw(st.integers(0, len(records) - 1))
    del records[where][missing]
    document = "\n".join(json.dumps(record) for record in records)
    path = write(scratch / "train.jsonl", encoded(document, line_end, False, "utf-8"))
    with pytest.raises(DataError) as caught:
        read_local(path, "jsonl")
    assert str(caught.value).startswith(f"{path}:{where + 1}: no key {missing!r}"), str(caught.value)


@pytest.mark.parametrize("fmt, delimiter", [("csv", ","), ("tsv", "\t")])
@FAST
@given(
    rows=st.lists(st.tuples(clean_strings.map(universal), st.sampled_from(["0", "1"])), max_size=6),
    data=st.data(),
    line_end=st.sampled_from(LINE_ENDS),
)
def test_a_short_row_is_reported_at_its_line(scratch, fmt, delimiter, rows, data, line_end):
    where = data.draw(st.integers(0, len(rows)))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerows([("text", "label"), *rows[:where], ("no label here",), *rows[where:]])
    path = write(scratch / f"short.{fmt}", encoded(out.getvalue(), line_end, False, "utf-8"))
    # A quoted newline does not end a row, but it does start a new line of the file.
    line = 2 + sum(1 + text.count("\n") for text, _ in rows[:where])
    with pytest.raises(DataError) as caught:
        read_local(path, fmt)
    assert str(caught.value).startswith(f"{path}:{line}: row has fewer fields"), str(caught.value)


# Inputs the properties found, kept as plain tests so they run whatever hypothesis draws:
# the file's bytes, the format and options, and how the DataError goes on after the path.
FOUND_AND_REFUSED = [
    (b"1 a\r1 b\r1 caf\xe9\r", "label_text", {}, ":3: bytes not valid in data.encoding=utf-8"),
    (b"1 a\r\x00", "label_text", {}, ":2: NUL byte"),
    (codecs.BOM_UTF8 + b'{"text": "a", "label": 1}\n\xff', "jsonl", {}, ":2: bytes not valid"),
    (codecs.BOM_UTF8 + b"1 a", "label_text", {"encoding": "latin-1"}, ":1: starts with a UTF-8 byte-order mark"),
    (b"1 a", "label_text", {"encoding": "punycode"}, ": bytes not valid in data.encoding=punycode"),
    (b"1 a", "label_text", {"encoding": "rot13"}, ": data.encoding 'rot13' is not a text codec"),
    (b"1 a\n1 +2AA-", "label_text", {"encoding": "utf-7"}, ":2: an unpaired surrogate (\\ud800) in text"),
    (b'{"text": "\\ud800", "label": 1}', "jsonl", {}, ":1: 'text' holds an unpaired surrogate (\\ud800)"),
    (b'{"text": "a\\u0000", "label": 1}', "jsonl", {}, ":1: 'text' holds a NUL character"),
    (b'{"text": "a", "label": " "}', "jsonl", {}, ":1: empty 'label'"),
    (b'{"text": "a", "label": NaN}', "jsonl", {}, ":1: 'label' must be a string or an integer, got NaN"),
    (b"[" * 100_000, "jsonl", {}, ":1: JSON nested too deeply"),
    (b'{"text": "a", "label": ' + b"9" * 5_000 + b"}", "jsonl", {}, ":1: JSON nested too deeply or with too long"),
    (b'{"te\\nxt": "a"}', "jsonl", {}, ":1: no key 'text' (keys: 'te\\nxt')"),
    (b'"te\nxt",label\na,1', "csv", {}, ":1: no column 'text' (columns: 'te\\nxt', label)"),
]


@pytest.mark.parametrize("raw, fmt, options, message", FOUND_AND_REFUSED)
def test_inputs_the_properties_found_are_refused_in_one_line(tmp_path, raw, fmt, options, message):
    path = write(tmp_path / f"train{SUFFIXES[fmt]}", raw)
    with pytest.raises(DataError) as caught:
        read_local(path, fmt, **options)
    assert str(caught.value).startswith(f"{path}{message}"), str(caught.value)


FOUND_AND_READ = [
    (codecs.BOM_UTF8 + b"1 a", "label_text", {"encoding": "U8"}, (["a"], ["1"])),
    (codecs.BOM_UTF16_LE + "1 a".encode("utf-16-le"), "label_text", {"encoding": "utf-16-le"}, (["a"], ["1"])),
    (b"1 a\n0 b", "label_text", {"task": "lm"}, (["a", "b"], [None, None])),
    (b'{"text": "a", "label": 1.0}', "jsonl", {}, (["a"], ["1"])),
]


@pytest.mark.parametrize("raw, fmt, options, expected", FOUND_AND_READ)
def test_inputs_the_properties_found_are_read(tmp_path, raw, fmt, options, expected):
    examples = read_local(write(tmp_path / f"train{SUFFIXES[fmt]}", raw), fmt, **options)
    assert (examples.texts, examples.labels) == expected


def test_labels_that_int_refuses_still_sort(tmp_path):
    lines = [f"{label} text\n" for label in ["2", "10", "²", "--1", "1", "01"]]
    path = write(tmp_path / "train.txt", "".join(lines).encode())
    result = prepare.run(prepare_config(path, "sentiment"), tmp_path / "work")
    assert result.labels == ["01", "1", "2", "10", "--1", "²"]


def prepare_config(path: Path, task: str, *extra: str) -> Config:
    """A config that prepares `path` as the only split, so prepare writes its examples in order."""
    return load_config(None, [
        f"task={task}", "data.tfds=null", f"data.train={path}", "data.test=null", "data.validation_fraction=0",
        "data.test_fraction=0", "model.bidirectional=false", *extra,
    ])


@pytest.mark.parametrize("task", ["sentiment", "lm"])
@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.fixed_dictionaries({"text": strings | long_lines, "label": labels}), min_size=1, max_size=9))
def test_what_a_reader_returns_goes_through_prepare_unchanged(scratch, task, records):
    # JSONL is the format that can carry any string (escapes included) into the prepare stage.
    path = write(scratch / "train.jsonl", "\n".join(json.dumps(r) for r in records).encode())
    config = prepare_config(path, task)
    try:
        result = prepare.run(config, fresh_folder(scratch / "work"))
    except DataError as err:
        assert "\n" not in str(err), str(err)
        return
    examples = read_local(path, "jsonl", task=task)
    texts, ids = splits.read_examples(result.output_dir / "train.jsonl")
    assert texts == examples.texts
    assert [result.labels[i] for i in ids] == ([] if task == "lm" else examples.labels)
    assert json.loads((result.output_dir / "labels.json").read_text(encoding="utf-8")) == result.labels


@settings(max_examples=12, deadline=None)
@given(texts=st.lists(clean_strings | long_lines, min_size=2, max_size=10))
def test_prepared_texts_train_and_encode_with_sentencepiece(scratch, texts):
    records = [{"text": text, "label": number % 2} for number, text in enumerate(texts)]
    path = write(scratch / "train.jsonl", "\n".join(json.dumps(r) for r in records).encode())
    config = prepare_config(path, "sentiment", "tokenizer.vocab_size=400")
    workdir = fresh_folder(scratch / "work")
    try:
        prepared = prepare.run(config, workdir)
        result = tokenization.run(config, workdir)
    except (DataError, TokenizerError) as err:
        assert "\n" not in str(err), str(err)
        return
    arrays = splits.load_split(result.output_dir, "train")
    assert len(arrays["lengths"]) == len(arrays["labels"]) == prepared.counts["train"]
    assert arrays["lengths"].sum() == len(arrays["ids"]) and (arrays["lengths"] >= 1).all()
    assert ((arrays["ids"] >= 0) & (arrays["ids"] < result.vocab_size)).all()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:builtins.open [{marker}, w]",
    "!!python/object/new:builtins.open [{marker}, w]",
    "!!python/name:builtins.open",
])
def test_yaml_presets_are_read_with_a_safe_loader(tmp_path, tag):
    marker = tmp_path / "opened"
    preset = tmp_path / "evil.yaml"
    preset.write_text(f"name: {tag.format(marker=json.dumps(str(marker)))}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(preset)
    with contextlib.suppress(ConfigError):  # an override that is not YAML stays a plain string
        load_config(None, [f"name={tag.format(marker=json.dumps(str(marker)))}"])
    assert not marker.exists()


def calls_named(name: str) -> list[tuple[str, ast.Call]]:
    """Every call in pipeline/ to a function or method called `name`, with its file name."""
    found = []
    for source in sorted(PIPELINE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                if getattr(func, "attr", None) == name or getattr(func, "id", None) == name:
                    found.append((str(source.relative_to(PIPELINE_DIR)), node))
    return found


def keyword(call: ast.Call, name: str) -> object:
    """The literal passed as `name=` to `call` (None if it is not passed); a variable is an error."""
    for argument in call.keywords:
        if argument.arg == name:
            return ast.literal_eval(argument.value)
    return None


def test_keras_models_load_in_safe_mode():
    loads = calls_named("load_model")
    assert loads, "no load_model call in pipeline/; this test looks for them"
    for file, call in loads:
        assert keyword(call, "safe_mode") is True, f"{file}:{call.lineno}: load_model without safe_mode=True"


def test_nothing_unpickles_a_file():
    unpicklers = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for source in sorted(PIPELINE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & unpicklers, f"{source.name}:{node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in unpicklers, f"{source.name}:{node.lineno}"
    assert not calls_named("read_pickle")
    for file, call in calls_named("load"):  # np.load's default, allow_pickle=False, is what we want
        assert keyword(call, "allow_pickle") in (None, False), f"{file}:{call.lineno}: np.load with allow_pickle"


def test_encoded_splits_refuse_pickled_arrays(tmp_path):
    np.savez(tmp_path / "train.npz", ids=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        splits.load_split(tmp_path, "train")
