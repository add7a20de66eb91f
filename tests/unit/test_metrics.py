import pytest

from pipeline import metrics
from pipeline.config import load_config, monitor_mode


@pytest.mark.parametrize("name, higher", [("val_accuracy", True), ("test_macro_f1", True), ("test_auc", True),
                                          ("val_loss", False), ("test_perplexity", False),
                                          ("val_bits_per_char", False), ("epochs_run", True)])
def test_each_metric_says_which_way_is_better(name, higher):
    assert metrics.higher_is_better(name) is higher


def test_what_training_logs_per_epoch_depends_on_the_task():
    assert metrics.validation_metrics("sentiment") == ("val_loss", "val_accuracy")
    assert metrics.validation_metrics("lm") == ("val_loss", "val_accuracy", "val_perplexity", "val_bits_per_char")
    assert metrics.headline("lm") == "test_bits_per_char" and metrics.headline("sentiment", "val") == "val_accuracy"


@pytest.mark.parametrize("monitor, mode", [("val_accuracy", "max"), ("val_loss", "min"),
                                           ("val_bits_per_char", "min"), ("val_perplexity", "min")])
def test_early_stopping_reads_the_direction_from_the_metric(monitor, mode):
    config = load_config(None, ["task=lm", "model.bidirectional=false", f"train.monitor={monitor}"])
    assert monitor_mode(config.train) == mode
