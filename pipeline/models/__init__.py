"""Keras models: builders, custom layers, losses and metrics, cuDNN eligibility, carried states, generation."""

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
