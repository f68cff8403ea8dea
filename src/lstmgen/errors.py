"""The one exception type users see: a problem, named, with its fix."""


class LstmgenError(Exception):
    """Bad input or state, reported as one line: what is wrong and how to fix it.

    The CLI prints ``error: <message>`` and exits with status 1; no traceback.

    Example:
        >>> raise LstmgenError("corpus is empty", hint="pass a file with some text")
        Traceback (most recent call last):
        ...
        lstmgen.errors.LstmgenError: corpus is empty (pass a file with some text)
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class Interrupted(LstmgenError):
    """Training stopped by Ctrl-C after saving a checkpoint."""
