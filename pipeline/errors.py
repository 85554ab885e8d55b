"""User-facing errors."""


class PromptmeshError(Exception):
    """A user-facing error: the message names the file, what is wrong and what to do.

    The CLI prints it as one line on stderr and exits non-zero; any other exception is a bug
    and keeps its traceback.
    """
