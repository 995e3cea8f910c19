"""The one exception type users see: a one-line message naming the file, row or key at fault."""


class XstiltsError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits with status 2."""
