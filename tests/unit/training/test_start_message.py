import numpy as np

from pipeline.training.distribute.sync import StartMessage


def test_the_chiefs_start_message_crosses_the_wire_field_by_field():
    message = StartMessage(training=True, resumed=True, epoch=3, stopped=True, wait=1, best=0.25, best_epoch=2,
                           digest=4_294_967_295.0)  # the largest crc32 survives float64 exactly
    vector = message.vector()
    assert vector.dtype == np.float64 and vector.tolist() == [1, 1, 3, 1, 1, 0.25, 2, 4_294_967_295.0]
    assert StartMessage.from_vector(vector) == message


def test_no_best_value_yet_travels_as_nan_and_comes_back_as_none():
    vector = StartMessage(training=False).vector()
    assert np.isnan(vector[5]) and StartMessage.from_vector(vector) == StartMessage(training=False)
