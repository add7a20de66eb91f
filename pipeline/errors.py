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


class TrainingError(PipelineError):
    """Training that cannot go on, such as a loss that became NaN."""


class ServingError(PipelineError):
    """A model server that cannot listen where asked, or that stopped by itself."""


class SweepError(PipelineError):
    """A sweep's study or storage that cannot be used as asked."""


class Interrupted(BaseException):
    """The process was asked to stop (SIGINT or SIGTERM). Like `KeyboardInterrupt`, it is not an
    `Exception`, so no `except Exception` swallows it on the way out."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Stopped(Exception):
    """Work stopped on purpose before its end, which is not a fault: a sweep pruning a trial that
    cannot win. The MLflow runs it passes through end KILLED, tagged with `tags`."""

    def __init__(self, message: str, tags: dict[str, str] | None = None):
        super().__init__(message)
        self.tags = dict(tags or {})
