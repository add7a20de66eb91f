"""Which recurrent layers a GPU would run on cuDNN kernels, and why not."""

from __future__ import annotations

from dataclasses import dataclass

import keras


@dataclass(frozen=True)
class LSTMKernel:
    """Whether one recurrent layer (LSTM, GRU or SimpleRNN) can use the cuDNN kernel, and if not, why."""

    layer: str
    cudnn_eligible: bool
    reason: str


def recurrent_layers(model: keras.Model) -> list[keras.layers.RNN]:
    """Every LSTM, GRU and SimpleRNN in `model`, both directions of a `Bidirectional` wrapper."""
    kinds = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            found += [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, kinds):
            found.append(layer)
    return found


def lstm_layers(model: keras.Model) -> list[keras.layers.LSTM]:
    """Every LSTM in `model`, including both directions of a `Bidirectional` wrapper."""
    return [layer for layer in recurrent_layers(model) if isinstance(layer, keras.layers.LSTM)]


def cudnn_report(model: keras.Model) -> list[LSTMKernel]:
    """Check each recurrent layer against the conditions Keras 3 on TF has for its cuDNN kernel.

    The conditions mirror `keras.layers.LSTM` and `keras.layers.GRU`: tanh and sigmoid
    activations, a bias, no unrolling, no recurrent dropout, `use_cudnn` not False, and for a GRU
    `reset_after=True`. A SimpleRNN never has one. A GPU must also be visible, which
    `gpu_visible()` reports separately.
    """
    report = []
    for layer in recurrent_layers(model):
        if isinstance(layer, keras.layers.SimpleRNN):
            report.append(LSTMKernel(layer.name, False, "SimpleRNN has no cuDNN kernel"))
            continue
        problems = []
        if layer.activation is not keras.activations.tanh:
            problems.append("activation is not tanh")
        if layer.recurrent_activation is not keras.activations.sigmoid:
            problems.append("recurrent_activation is not sigmoid")
        if not layer.use_bias:
            problems.append("use_bias=False")
        if isinstance(layer, keras.layers.GRU) and not layer.reset_after:
            problems.append("reset_after=False")
        if layer.unroll:
            problems.append("unroll=True")
        if layer.recurrent_dropout:
            problems.append(f"recurrent_dropout={layer.recurrent_dropout}")
        if layer.use_cudnn is False:
            problems.append("use_cudnn=False")
        report.append(LSTMKernel(layer.name, not problems, "; ".join(problems) or "eligible"))
    return report


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
