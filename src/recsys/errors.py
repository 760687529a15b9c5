"""User-facing errors: every message says what went wrong and how to fix it."""


class RecsysError(Exception):
    """An error caused by input or configuration, not by a bug.

    Command-line entry points print ``str(error)`` on one line and exit with status 2;
    servers turn it into an HTTP 4xx response.
    """


class DataError(RecsysError):
    """Input data is missing, malformed or empty."""


class BundleError(RecsysError):
    """A model bundle is missing, corrupt or incompatible."""
