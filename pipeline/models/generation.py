"""Language-model decoding that carries LSTM states from step to step.

`build_decoder` makes a second view of a trained language model: same weights, but it takes
the LSTM states in and gives them out, and returns only the next-token logits. Generation reads
the prompt once (`prime`), then calls `step` once per new token, so its cost is linear in the
generated length. Sampling uses stateless random ops seeded by `(seed, position)`, so one seed
gives one text, eagerly in Python and inside an exported SavedModel alike.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from pipeline.data import subwords
from pipeline.models import ReversibleEmbedding, recurrent_layers

# Ids never worth generating: padding, unknown, BOS and EOS (the stream has no EOS in it).
BANNED_IDS = (subwords.PAD_ID, subwords.UNK_ID, subwords.BOS_ID, subwords.EOS_ID)


def build_decoder(model: keras.Model) -> keras.Model:
    """A model `[ids, h_0, c_0, h_1, c_1, ...] -> [next-token logits, h_0', c_0', ...]` (no `c` for
    a GRU or SimpleRNN).

    Its layers copy the weights of `model` (built by `build_language_model_lstm`), by name. The
    embedding masks id 0, so right-padded prompts of different lengths end in the state of
    their own last token.
    """
    source = model.get_layer("embedding")
    lstms = recurrent_layers(model)
    tied = any(layer.name == "projection" for layer in model.layers)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedding = ReversibleEmbedding(source.input_dim, source.output_dim, mask_zero=True, name="embedding")
    x = embedding(ids)
    # Keras does not pass the embedding's mask on when `initial_state` is given: pass it by hand.
    mask = keras.ops.not_equal(ids, subwords.PAD_ID)
    states_in, states_out = [], []
    for lstm in lstms:
        # An LSTM carries (h, c); a GRU or a SimpleRNN (`model.cell`) carries h alone.
        names = ("h", "c") if isinstance(lstm, keras.layers.LSTM) else ("h",)
        state = [keras.Input(shape=(lstm.units,), name=f"{lstm.name}_{s}") for s in names]
        layer = type(lstm)(lstm.units, return_sequences=True, return_state=True, name=lstm.name)
        x, *states = layer(x, initial_state=state, mask=mask)
        states_in += state
        states_out += states
        last = states[0]  # the top layer's output at each row's last real token
    if tied:
        logits = embedding(keras.layers.Dense(source.output_dim, name="projection")(last), reverse=True)
    else:
        logits = keras.layers.Dense(source.input_dim, dtype="float32", name="logits")(last)
    decoder = keras.Model([ids, *states_in], [logits, *states_out], name="language_model_decoder")
    for layer in decoder.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return decoder


def sample(logits: tf.Tensor, temperature: tf.Tensor, top_k: tf.Tensor, seed: tf.Tensor,
           position: tf.Tensor) -> tf.Tensor:
    """One token id per row: greedy when `temperature == 0`, else sampled from the top `top_k`.

    `top_k <= 0` or above the vocabulary size means the whole vocabulary.
    """
    vocab = tf.shape(logits)[-1]
    banned = tf.reduce_any(tf.range(vocab)[:, None] == tf.constant(BANNED_IDS)[None, :], axis=1)
    logits = tf.where(banned[None, :], tf.float32.min, tf.cast(logits, tf.float32))
    k = tf.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth_best = tf.math.top_k(logits, k=k).values[:, -1:]
    logits = tf.where(logits < kth_best, tf.float32.min, logits)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    scaled = logits / tf.maximum(temperature, 1e-6)
    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
    sampled = tf.random.stateless_categorical(scaled, 1, seed=seeds, dtype=tf.int32)[:, 0]
    return tf.where(temperature > 0, sampled, greedy)


class Generator(tf.Module):
    """Prime on prompts, then one decoder step per generated token."""

    def __init__(self, decoder: keras.Model):
        super().__init__()
        self.decoder = decoder
        self.units = [int(t.shape[-1]) for t in decoder.inputs[1:]]

    def prime(self, prompt_ids: tf.Tensor):
        """Read right-padded prompts `[batch, time]` (BOS first); next logits and states."""
        batch = tf.shape(prompt_ids)[0]
        zeros = [tf.zeros([batch, units]) for units in self.units]
        logits, *states = self.decoder([prompt_ids, *zeros], training=False)
        return logits, states

    def step(self, token: tf.Tensor, states: list[tf.Tensor]):
        """Advance every row by one token `[batch]`; next logits and states."""
        logits, *states = self.decoder([token[:, None], *states], training=False)
        return logits, states

    def generate(self, prompt_ids, max_tokens, temperature, top_k, seed) -> tf.Tensor:
        """`[batch, max_tokens]` new token ids continuing each prompt."""
        logits, states = self.prime(prompt_ids)
        tokens = tf.TensorArray(tf.int32, size=max_tokens)
        for i in tf.range(max_tokens):
            token = sample(logits, temperature, top_k, seed, i)
            tokens = tokens.write(i, token)
            logits, states = self.step(token, states)
        return tf.transpose(tokens.stack(), [1, 0])


def generate_text(generator: Generator, sp, prompts: list[str], *, max_tokens: int, temperature: float,
                  top_k: int, seed: int) -> list[str]:
    """Prompt plus continuation for each prompt, with the Python SentencePiece processor."""
    prompt_ids = keras.utils.pad_sequences(subwords.encode(sp, prompts), padding="post", value=0, dtype="int32")
    new = generator.generate(tf.constant(prompt_ids), tf.constant(max_tokens), tf.constant(float(temperature)),
                             tf.constant(top_k), tf.constant(seed, tf.int64)).numpy()
    return [sp.decode([int(t) for t in row if t] + new[i].tolist()) for i, row in enumerate(prompt_ids)]


class LanguageModelServer(tf.Module):
    """Raw strings in: `generate` continues prompts, `score` gives bits per character.

    `score` reads each text as the evaluate stage reads the test split: in one pass, the state
    carried through the whole text.
    """

    def __init__(self, model: keras.Model, tokenizer_model: bytes):
        super().__init__()
        self.model = model
        self.generator = Generator(build_decoder(model))
        self.tokenizer = tf_text.SentencepieceTokenizer(model=tokenizer_model, add_bos=True)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="prompt"),
        tf.TensorSpec([], tf.int32, name="max_tokens"),
        tf.TensorSpec([], tf.float32, name="temperature"),
        tf.TensorSpec([], tf.int32, name="top_k"),
        tf.TensorSpec([], tf.int64, name="seed"),
    ])
    def generate(self, prompt, max_tokens, temperature, top_k, seed):
        ids = self.tokenizer.tokenize(prompt)
        new = self.generator.generate(ids.to_tensor(default_value=0), max_tokens, temperature, top_k, seed)
        full = tf.concat([ids, tf.RaggedTensor.from_tensor(new)], axis=1)
        return {"text": self.tokenizer.detokenize(full)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def score(self, text):
        ids = self.tokenizer.tokenize(text).to_tensor(default_value=0)
        # One extra padding column keeps the input at least one step long for empty strings.
        ids = tf.pad(ids, [[0, 0], [0, 1]])
        targets = ids[:, 1:]
        logits = self.model(ids[:, :-1], training=False)
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))
        nats = tf.reduce_sum(nats * tf.cast(targets != subwords.PAD_ID, tf.float32), axis=1)
        characters = tf.cast(tf.strings.length(text, unit="UTF8_CHAR"), tf.float32)
        return {"bits_per_char": tf.math.divide_no_nan(nats / tf.math.log(2.0), characters)}


def build_lm_server(model: keras.Model, tokenizer_model: bytes):
    """The export module and its signatures, for `export.run`."""
    server = LanguageModelServer(model, tokenizer_model)
    return server, {"serving_default": server.generate, "generate": server.generate, "score": server.score}
