"""The exception types the CLI turns into one line: mistakes a user can fix, and a stop asked for by a signal."""


class UsageError(ValueError):
    """Bad input (an argument, a path, a dataset file) explained in a sentence that says what to do.

    It is a ``ValueError`` so that Python callers can catch it the way they catch torchvision's own
    argument errors.
    """


class Interrupted(BaseException):
    """A command stopped by SIGTERM or SIGINT before it finished; the CLI says so and exits with 128 + the signal.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
