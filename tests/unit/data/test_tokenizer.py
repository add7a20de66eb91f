import numpy as np
import pytest

from pipeline.data import splits, subwords
from pipeline.errors import TokenizerError
from pipeline.stages import prepare, tokenization

SENTENCES = ["the cat sat", "the cat ran", "a dog sat", "a dog ran", "the dog sat on the cat"] * 4


@pytest.fixture(scope="module")
def sp():
    return subwords.from_bytes(subwords.train_sentencepiece(SENTENCES, vocab_size=16, model_type="word"))


def test_reserved_ids(sp):
    assert [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()] == [0, 1, 2, 3]


def test_exact_ids_with_bos_first(sp):
    # Word pieces take ids by frequency after the 4 reserved ones.
    assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == [
        "<pad>", "<unk>", "<s>", "</s>", "▁the", "▁cat", "▁dog", "▁sat", "▁a", "▁ran", "▁on"]
    assert subwords.encode(sp, ["the cat sat", "a dog ran", "", "zebra"]) == [
        [2, 4, 5, 7], [2, 8, 6, 9], [2], [2, 1]]


def test_unigram_exact_ids():
    sp = subwords.from_bytes(subwords.train_sentencepiece(SENTENCES, vocab_size=20, model_type="unigram"))
    assert subwords.encode(sp, ["the cat sat", "the dog ran"]) == [
        [2, 4, 9, 7, 6, 14, 13], [2, 4, 9, 7, 6, 4, 10, 8, 11, 4, 17, 5, 12]]
    assert sp.decode(subwords.encode(sp, ["the dog ran"])[0]) == "the dog ran"


def test_max_length_cuts_after_bos(sp):
    assert subwords.encode(sp, ["the cat sat on the cat"], max_length=3) == [[2, 4, 5]]


def test_pack_flattens_ragged_sequences():
    ids, lengths = subwords.pack([[2, 5], [2], [2, 7, 8]])
    assert ids.tolist() == [2, 5, 2, 2, 7, 8] and lengths.tolist() == [2, 1, 3]
    assert ids.dtype == np.int32


def test_vocabulary_too_small_for_the_characters():
    with pytest.raises(TokenizerError, match="tokenizer.vocab_size=8 cannot hold the .* characters"):
        subwords.train_sentencepiece(SENTENCES, vocab_size=8, model_type="unigram")


LINES = ["ROMEO:\nBut soft, what light through yonder window breaks?\n", "JULIET:\nAy me.\n"] * 10


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_lossless_tokenizer_spells_unseen_characters_as_bytes(model_type):
    sp = subwords.from_bytes(subwords.train_sentencepiece(LINES, vocab_size=320, model_type=model_type,
                                                            character_coverage=1.0, lossless=True))
    text = "ROMEO: жé 日本 \U0001f600!\n"  # Cyrillic, Latin-1, CJK and an emoji, none seen
    (ids,) = subwords.encode(sp, [text])
    assert subwords.UNK_ID not in ids
    assert sp.decode(ids) == text
    # The emoji is four bytes, so four pieces.
    assert [sp.id_to_piece(i) for i in ids].count("<0xF0>") == 1


def test_lossless_vocabulary_too_small_for_the_byte_pieces():
    with pytest.raises(TokenizerError, match=r"tokenizer.vocab_size=60 is too small .* at least \d{3}$"):
        subwords.train_sentencepiece(LINES, vocab_size=60, model_type="bpe", character_coverage=1.0, lossless=True)


def test_tokenize_stage_writes_model_and_arrays(tiny_config, tmp_path):
    prepare.run(tiny_config, tmp_path / "work")
    result = tokenization.run(tiny_config, tmp_path / "work")
    out = result.output_dir
    assert (out / "tokenizer.model").is_file() and (out / "tokenizer.vocab").is_file()
    train = splits.load_split(out, "train")
    starts = np.concatenate([[0], np.cumsum(train["lengths"])[:-1]])
    assert (train["ids"][starts] == subwords.BOS_ID).all(), "every sequence starts with BOS"
    assert (train["lengths"] >= 1).all() and (train["lengths"] <= tiny_config.train.max_length).all()
    assert len(train["labels"]) == len(train["lengths"]) == 64
    assert 0 not in train["ids"], "padding id never appears inside a sequence"
