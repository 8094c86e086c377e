"""The one exception type a user sees."""


class FerError(Exception):
    """A problem the user can act on.

    The CLI prints the message on one line (no traceback) and exits non-zero, so the
    message must say what went wrong and what to do about it.
    """
