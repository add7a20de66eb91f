"""Input: readers of local files and TFDS, synthetic data, SentencePiece subwords, the files stages hand on, input
pipelines, pretrained vectors."""

