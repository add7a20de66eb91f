"""SentencePiece: train a model on training texts, load it, and encode text to id sequences.

Reserved ids are fixed for every model: 0 is padding (Keras masks it), 1 unknown, 2 BOS, 3 EOS.
Every encoded sequence starts with BOS, so an empty text is one token long and no row of a
batch is ever fully masked.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pipeline.errors import TokenizerError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(
    sentences: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    max_sentences: int = 1_000_000,
    lossless: bool = False,
) -> bytes:
    """Train a SentencePiece model and return its serialized bytes.

    Args:
        sentences: training sentences; SentencePiece samples at most `max_sentences` of them.
        vocab_size: the target size including the 4 reserved ids. It is a ceiling, not a
            demand: a corpus too small for it yields a smaller vocabulary instead of an error.
        model_type: `unigram`, `bpe`, `char` or `word`.
        character_coverage: the share of characters that get their own piece.
        max_sentences: the sample size SentencePiece trains on.
        lossless: keep the text exactly (no Unicode normalisation, spaces kept, newline a
            piece of its own, and a character unseen in training spelled as its UTF-8 bytes,
            one piece per byte), so `decode(encode(text)) == text` for any text and nothing
            maps to `<unk>`. A language model needs this: it must generate line breaks, and its
            bits per character must count every character. The 256 byte pieces count towards
            `vocab_size`.
    """
    model = io.BytesIO()
    exact = {"normalization_rule_name": "identity", "remove_extra_whitespaces": False,
             "user_defined_symbols": ["\n"], "allow_whitespace_only_pieces": True,
             "byte_fallback": True} if lossless else {}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=2,
            minloglevel=2,
            **exact,
        )
    except RuntimeError as err:
        raise TokenizerError(_explain(str(err), vocab_size, lossless)) from None
    return model.getvalue()


def _explain(message: str, vocab_size: int, lossless: bool) -> str:
    needed = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if needed and lossless:
        return (
            f"tokenizer.vocab_size={vocab_size} is too small for a language model, whose tokenizer holds the "
            f"256 byte pieces besides the characters of its training text; raise tokenizer.vocab_size to at "
            f"least {needed.group(2)}"
        )
    if needed:
        return (
            f"tokenizer.vocab_size={vocab_size} cannot hold the {needed.group(2)} characters "
            f"this training text needs; raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        )
    return f"SentencePiece training failed: {message.splitlines()[-1]}"


def load(path: str | Path) -> spm.SentencePieceProcessor:
    """Load a `.model` file written by `save`."""
    return spm.SentencePieceProcessor(model_file=str(path))


def from_bytes(model: bytes) -> spm.SentencePieceProcessor:
    """A processor for serialized model bytes."""
    return spm.SentencePieceProcessor(model_proto=model)


def save(model: bytes, directory: Path) -> tuple[Path, Path]:
    """Write `tokenizer.model` and a readable `tokenizer.vocab` (`piece<TAB>score`)."""
    model_path, vocab_path = directory / "tokenizer.model", directory / "tokenizer.vocab"
    model_path.write_bytes(model)
    sp = from_bytes(model)
    lines = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):.4f}" for i in range(sp.get_piece_size()))
    vocab_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model_path, vocab_path


def encode(sp: spm.SentencePieceProcessor, texts: list[str], max_length: int | None = None,
           sampling: float = 0.0) -> list[list[int]]:
    """Ids of each text, BOS first, cut to `max_length` tokens when given.

    With `sampling` > 0 each text gets a segmentation drawn at random (SentencePiece's
    `enable_sampling` with `alpha=sampling`, over all segmentations) instead of the best one.
    SentencePiece's random generator cannot be seeded reproducibly across processes: keep what
    was drawn if it must be read again.
    """
    ids = sp.encode(texts, add_bos=True, num_threads=2, enable_sampling=sampling > 0, alpha=sampling,
                    nbest_size=-1)
    if max_length is not None:
        ids = [seq[:max_length] for seq in ids]
    return ids


def pack(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ragged sequences into `(ids, lengths)` int32 arrays."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
    ids = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths
