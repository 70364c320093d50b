"""The errors a user sees as one line (`router` prints them without a traceback and exits 2)."""


class ConfigError(ValueError):
    """A mistake in the configuration, the command line or the input that the user can fix; the
    message says what and how."""


class JobFailed(RuntimeError):
    """The job cannot go on (e.g. an engine did not start); the message says which and why, in one line."""
