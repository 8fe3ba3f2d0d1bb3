"""The base of every error a user can act on: the CLI prints its message (no traceback) and exits."""


class RetinopathyError(Exception):
    """Bad input, a missing file, an unusable checkpoint...: the message says what and what to do."""

    exit_code = 2
    rank_local = False  # under torchrun: met by one process alone (else by all: each machine's first one says it)


class NotWritten(RetinopathyError, OSError):
    """A file that could not be written for want of room (a full disk, a quota, a file-size limit):
    ``NotWritten(errno, strerror, path)``. ``run``: a training run to continue once there is room (``train`` sets
    it; under ``experiment`` the CLI says to run the experiment again)."""

    run = None

    def __str__(self):
        return f"{self.filename}: cannot be written ({self.strerror})"


class DataWarning(UserWarning):
    """Something about the data or the results to know before trusting them (patients on both sides of a split,
    photographs graded in doubt or without their other eye, blank or coarse heatmaps); the CLI prints it once, as
    ``warning: ...``."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a training run, with its folder (from --out, --resume or a config file) to continue from."""

    def __init__(self, run):
        super().__init__()
        self.run = run
