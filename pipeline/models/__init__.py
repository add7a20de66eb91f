"""Keras LSTM models for both tasks, and the check that each LSTM can run on cuDNN.

Builders take explicit hyperparameters; `build_model(config, ...)` is the one bridge from a
`Config`. The recurrent layer is an LSTM unless `cell` asks for a GRU or a SimpleRNN (to compare
them on the same data). Every LSTM (and GRU) is built with the settings under which Keras 3 on TensorFlow picks the
fused cuDNN kernel when a GPU is visible: tanh activation, sigmoid recurrent activation,
`use_bias=True`, `unroll=False` and no recurrent dropout. Inputs use id 0 as padding and are
right-padded, with BOS first in every row, which is what that kernel demands of a mask.
"""

from pipeline.models.builders import (
    CELLS,
    build_language_model_lstm,
    build_model,
    build_sentiment_lstm,
    recurrent_layer,
    set_forget_bias,
    training_model,
)
from pipeline.models.cudnn import LSTMKernel, cudnn_report, gpu_visible, lstm_layers, recurrent_layers
from pipeline.models.layers import MaskedMaxPooling1D, MemberStack, ReversibleEmbedding
from pipeline.models.losses import EnsembleAccuracy, LabelCrossentropy, MemberCrossentropy, label_crossentropy

__all__ = [
    "CELLS", "EnsembleAccuracy", "LSTMKernel", "LabelCrossentropy", "MaskedMaxPooling1D", "MemberCrossentropy",
    "MemberStack", "ReversibleEmbedding", "build_language_model_lstm", "build_model", "build_sentiment_lstm",
    "cudnn_report", "gpu_visible", "label_crossentropy", "lstm_layers", "recurrent_layer", "recurrent_layers",
    "set_forget_bias", "training_model",
]
