"""The served model's checks on a request, which the scoring server turns into 400 answers."""

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pipeline.tracking.pyfunc import GENERATION_DEFAULTS, generation_settings, strings


def test_strings_keeps_empty_and_non_ascii_texts():
    texts = ["a great film", "", "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600"]
    assert strings(pd.DataFrame({"text": texts}), "text") == texts


@pytest.mark.parametrize(("value", "shown"), [(5, "int 5"), (None, "NoneType None"), (1.5, "float 1.5"),
                                              (["a"], "list ['a']"), (True, "bool True")])
def test_a_value_that_is_not_a_string_is_a_bad_request(value, shown):
    with pytest.raises(MlflowException) as raised:
        strings(pd.DataFrame({"prompt": ["fine", value]}, dtype=object), "prompt")
    assert raised.value.get_http_status_code() == 400
    assert raised.value.message == f"column 'prompt' must hold strings; row 1 holds {shown}"


def test_generation_settings_fill_in_defaults_and_refuse_what_the_decoder_cannot_use():
    assert generation_settings(None) == GENERATION_DEFAULTS
    assert generation_settings({"max_tokens": 5, "temperature": 0})["max_tokens"] == 5
    for params, message in [({"max_tokens": 0}, "max_tokens must be at least 1; got 0"),
                            ({"temperature": -0.5}, "temperature must be 0 (greedy) or positive; got -0.5")]:
        with pytest.raises(MlflowException) as raised:
            generation_settings(params)
        assert raised.value.get_http_status_code() == 400 and raised.value.message == message
