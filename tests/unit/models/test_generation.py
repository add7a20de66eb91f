import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import models
from pipeline.models import generation


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def lm(request):
    keras.utils.set_random_seed(0)
    return models.build_language_model_lstm(30, units=8, embedding_dim=6, layers=2, tie_embeddings=request.param)


def _generate(generator, prompts, max_tokens=12, temperature=0.8, top_k=0, seed=7):
    return generator.generate(tf.constant(prompts, tf.int32), tf.constant(max_tokens), tf.constant(temperature),
                              tf.constant(top_k), tf.constant(seed, tf.int64)).numpy()


def test_primed_logits_match_the_full_model_for_padded_prompts(lm):
    generator = generation.Generator(generation.build_decoder(lm))
    logits, _ = generator.prime(tf.constant([[2, 5, 6, 7], [2, 9, 0, 0]], tf.int32))
    np.testing.assert_allclose(logits[0], lm(np.array([[2, 5, 6, 7]]))[0, -1], atol=1e-5)
    np.testing.assert_allclose(logits[1], lm(np.array([[2, 9]]))[0, -1], atol=1e-5)


def test_greedy_decoding_equals_rereading_the_prefix(lm):
    generator = generation.Generator(generation.build_decoder(lm))
    fast = _generate(generator, [[2, 5, 6]], temperature=0.0)[0].tolist()
    sequence = [2, 5, 6]
    for _ in range(12):
        logits = lm(np.array([sequence]))[0, -1].numpy()
        logits[list(generation.BANNED_IDS)] = -np.inf
        sequence.append(int(logits.argmax()))
    assert fast == sequence[3:]


def test_same_seed_same_tokens_eagerly_and_in_a_graph(lm):
    generator = generation.Generator(generation.build_decoder(lm))
    eager = _generate(generator, [[2, 5], [2, 0]], seed=11)
    graph = tf.function(generator.generate)(tf.constant([[2, 5], [2, 0]]), tf.constant(12), tf.constant(0.8),
                                            tf.constant(0), tf.constant(11, tf.int64)).numpy()
    assert (eager == graph).all()
    assert (eager == _generate(generator, [[2, 5], [2, 0]], seed=11)).all()
    assert not (eager == _generate(generator, [[2, 5], [2, 0]], seed=12)).all()


def test_cost_is_one_step_per_generated_token(lm, monkeypatch):
    generator = generation.Generator(generation.build_decoder(lm))
    calls = {"prime": 0, "step": 0}
    for name in calls:
        original = getattr(generator, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            assert _name == "prime" or args[0].shape == (1,), "a step reads one token, never the prefix"
            return _original(*args)

        monkeypatch.setattr(generator, name, counted)
    _generate(generator, [[2, 5, 6, 7, 8]], max_tokens=9)
    assert calls == {"prime": 1, "step": 9}


def test_sampling_rules():
    logits = tf.constant([[9.0, 9.0, 9.0, 9.0, 1.0, 3.0, 2.0]])
    args = dict(seed=tf.constant(0), position=tf.constant(0))
    assert int(generation.sample(logits, tf.constant(0.0), tf.constant(0), **args)[0]) == 5, "greedy skips banned ids"
    picks = {int(generation.sample(logits, tf.constant(5.0), tf.constant(1), seed=tf.constant(s),
                                   position=tf.constant(0))[0]) for s in range(20)}
    assert picks == {5}, "top-1 is greedy whatever the temperature"
    picks = {int(generation.sample(logits, tf.constant(5.0), tf.constant(0), seed=tf.constant(s),
                                   position=tf.constant(0))[0]) for s in range(50)}
    assert picks == {4, 5, 6}, "never a banned id, every other id possible"
