"""The one exception type for mistakes a user can fix: the CLI prints its message without a traceback."""


class UsageError(ValueError):
    """Bad input (an argument, a path, a dataset file) explained in a sentence that says what to do.

    It is a ``ValueError`` so that Python callers can catch it the way they catch torchvision's own
    argument errors.
    """
