"""Pretrained word vectors as the starting point of a model's embedding rows.

`model.pretrained_embeddings: PATH` names a file in the text format of word2vec and GloVe: one
word a line, followed by its numbers, separated by spaces; `.gz` files are read as they are, and
a first line of two integers (fastText's `.vec`: word count and dimension) is skipped. Each
vocabulary piece that stands for a whole word (SentencePiece marks a word's start with `▁`; a
`word` tokenizer has only such pieces) takes that word's vector, or, when the file lacks the
word, the vector of its case-folded form. Other rows keep their random initialisation.

Only the vectors of the vocabulary's words are kept while reading, so a file of millions of
words costs one pass over it, not its size in memory. `model.freeze_embeddings` then keeps the
whole embedding matrix fixed in training.
"""

from __future__ import annotations

import gzip
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WORD_START = "\u2581"  # SentencePiece's mark of a piece that begins a word


@dataclass(frozen=True)
class Coverage:
    """How many vocabulary pieces got a pretrained vector."""

    found: int
    vocabulary: int

    @property
    def fraction(self) -> float:
        return self.found / self.vocabulary


def piece_words(pieces: list[str]) -> dict[int, str]:
    """The word each whole-word piece stands for, by id: `▁movie` -> `movie`.

    Pieces inside a word (no `▁`), the bare `▁` and the reserved `<...>` pieces have no word.
    """
    words = {}
    for index, piece in enumerate(pieces):
        if piece.startswith(WORD_START) and len(piece) > 1:
            words[index] = piece[1:]
    return words


def read_vectors(path: Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of `words` (and of their case-folded forms) in a word2vec/GloVe text file.

    Returns:
        The vectors found, by the file's spelling, and the file's dimension.

    Raises:
        ConfigError: the file is missing.
        DataError: a line is not a word followed by as many numbers as the others, naming it.
    """
    if not path.is_file():
        raise ConfigError(f"model.pretrained_embeddings: {path} is not a file; give a word2vec or GloVe text file "
                          "(.txt, .vec, optionally .gz)")
    wanted = words | {w.casefold() for w in words}
    vectors: dict[str, np.ndarray] = {}
    dim = 0
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            word, _, rest = line.rstrip("\r\n").rstrip(" ").partition(" ")
            if number == 1 and _is_header(word, rest):
                dim = int(rest)
                continue
            if not word:
                continue
            if not dim:
                dim = len(rest.split(" "))
            if word not in wanted or word in vectors:
                continue
            try:
                vector = np.array(rest.split(" "), dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}, line {number}: the word {word!r} is followed by something other than "
                                "numbers; a vectors file has `WORD X1 X2 ...` lines") from None
            if vector.shape != (dim,):
                raise DataError(f"{path}, line {number}: {word!r} has {vector.size} numbers where the file's "
                                f"vectors have {dim}; is the file complete?")
            vectors[word] = vector
    if not dim:
        raise DataError(f"{path} holds no vectors; a vectors file has `WORD X1 X2 ...` lines")
    return vectors, dim


def _open_text(path: Path) -> io.TextIOBase:
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
        if path.suffix == ".gz":
            raw.peek(1)  # a file named .gz that is not gzip fails here, not mid-way
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err})") from None
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _is_header(word: str, rest: str) -> bool:
    """fastText's `.vec` files start with `COUNT DIMENSION`."""
    return word.isdigit() and rest.isdigit()


def initial_rows(words: dict[int, str], vectors: dict[str, np.ndarray], matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """`matrix` with the row of each word in `words` (id -> word) replaced by its vector, or by its
    case-folded form's; and how many rows were replaced."""
    rows = matrix.copy()
    found = 0
    for index, word in words.items():
        vector = vectors.get(word)
        if vector is None:
            vector = vectors.get(word.casefold())
        if vector is not None:
            rows[index] = vector
            found += 1
    return rows, found


def freeze(model: keras.Model, frozen: bool = True) -> None:
    """Make every embedding layer of `model` untrainable (or trainable). Call before compiling."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Embedding):
            layer.trainable = not frozen


def apply(model: keras.Model, pieces: list[str], path: Path, frozen: bool) -> Coverage:
    """Start every embedding layer of `model` (one per ensemble member) from the vectors in `path`;
    with `frozen`, those layers are not trained. Call before compiling.

    Args:
        pieces: the tokenizer's pieces, by id.
    """
    words = piece_words(pieces)
    vectors, dim = read_vectors(path, set(words.values()))
    found = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        if layer.output_dim != dim:
            raise ConfigError(f"model.embedding_dim is {layer.output_dim} but {path} holds {dim}-dimensional "
                              f"vectors; set model.embedding_dim={dim}")
        rows, found = initial_rows(words, vectors, keras.ops.convert_to_numpy(layer.embeddings))
        layer.embeddings.assign(rows)
    freeze(model, frozen)
    coverage = Coverage(found, len(pieces))
    log.info("pretrained vectors from %s: %d of %d pieces (%.1f%%)%s", path, coverage.found, coverage.vocabulary,
             100 * coverage.fraction, "; embeddings frozen" if frozen else "")
    return coverage
