import json

import pytest

from pipeline.data.readers import read_local
from pipeline.errors import DataError


def test_label_text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("1 a fine film\n0 dull\n\n2\tthree words here\n", encoding="utf-8")
    examples = read_local(path, "label_text")
    assert examples.texts == ["a fine film", "dull", "three words here"]
    assert examples.labels == ["1", "0", "2"]


def test_csv_with_quoted_newline_and_string_labels(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('review,sentiment\n"good, and\nlong",pos\nbad,neg\n', encoding="utf-8")
    examples = read_local(path, "auto", text_field="review", label_field="sentiment")
    assert examples.texts == ["good, and\nlong", "bad"]
    assert examples.labels == ["pos", "neg"]


def test_tsv(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\nhello there\tDESC\nwhere is it\tLOC\n", encoding="utf-8")
    assert read_local(path, "auto").labels == ["DESC", "LOC"]


def test_jsonl_with_int_labels(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "yes", "label": 1}, {"text": "no", "label": 0}]))
    examples = read_local(path, "auto")
    assert examples.labels == ["1", "0"]


def test_folder_one_subfolder_per_label(tmp_path):
    for label, texts in {"neg": ["bad one", "worse"], "pos": ["great"]}.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (tmp_path / "data" / label / f"{i}.txt").write_text(text, encoding="utf-8")
    examples = read_local(tmp_path / "data", "auto")
    pairs = sorted(zip(examples.labels, examples.texts, strict=True))
    assert pairs == [("neg", "bad one"), ("neg", "worse"), ("pos", "great")]


def test_plain_text_for_language_model(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("line one\r\nline two\rline three\n", encoding="utf-8")
    assert read_local(path, "auto", task="lm").texts == ["line one\nline two\nline three\n"]
    assert read_local(path, "text", task="lm", document="line").texts == ["line one", "line two", "line three"]


def test_bom_and_crlf_are_handled(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeff1 caf\u00e9 good\r\n0 bad\r\n".encode("utf-8"))
    examples = read_local(path, "label_text")
    assert examples.labels == ["1", "0"] and examples.texts == ["caf\u00e9 good", "bad"]


def test_blank_texts_are_skipped_and_counted(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n   ,1\nok,0\n,1\n", encoding="utf-8")
    examples = read_local(path, "csv")
    assert examples.texts == ["ok"] and examples.skipped_blank == 2


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        read_local(tmp_path / "nope.txt", "label_text")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        read_local(path, "label_text")


def test_invalid_encoding_names_file_line_and_setting(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"1 fine\n0 also fine\n1 caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.txt:3: bytes not valid in data\.encoding=utf-8"):
        read_local(path, "label_text")
    assert read_local(path, "label_text", encoding="latin-1").texts[2] == "caf\u00e9"


def test_csv_without_configured_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("review,label\nok,1\n")
    expected = r"train\.csv:1: no column 'text' \(columns: review, label\); set data\.text_field"
    with pytest.raises(DataError, match=expected):
        read_local(path, "csv")


def test_jsonl_without_configured_key(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"body": "b", "label": 0}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: no key 'text'"):
        read_local(path, "jsonl")


def test_jsonl_invalid_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid JSON"):
        read_local(path, "jsonl")


def test_text_format_has_no_labels_for_sentiment(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="data.format=text has no labels"):
        read_local(path, "text")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-8-sig", "utf-8"])
def test_auto_encoding_reads_unicode_files_and_says_which(tmp_path, encoding):
    text = "".join(f"{label} review {i}, caf\u00e9 \u65e5\u672c\n" for i in range(20) for label in "01")
    path = tmp_path / "reviews.txt"
    path.write_bytes(text.encode(encoding))
    examples = read_local(path, "label_text", encoding="auto")
    assert examples.texts[:2] == ["review 0, caf\u00e9 \u65e5\u672c"] * 2 and len(examples.texts) == 40
    (used,) = examples.encodings
    assert used.replace("_", "-") == ("utf-8" if encoding.startswith("utf-8") else encoding)


def test_auto_encoding_refuses_binary_data_naming_the_line(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match=r"model\.bin:3: bytes not valid in data\.encoding=utf-8"):
        read_local(path, "label_text", encoding="auto")
