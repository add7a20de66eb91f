"""The project's error types. The CLI shows any of them as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


class PipelineError(ValueError):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(PipelineError):
    """A configuration key or value that cannot be used."""


class DataError(PipelineError):
    """Input data that cannot be used; the message names the file (and line) and the fix."""


class TokenizerError(PipelineError):
    """A tokenizer setting that cannot work on this training data."""


class MissingStageError(PipelineError):
    """A stage was asked to run before the stage whose output it reads."""


class ExportError(PipelineError):
    """A path that is not an export of the kind asked for."""


class TrackingError(PipelineError):
    """MLflow cannot be reached or used as configured."""
