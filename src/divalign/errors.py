"""The exceptions the command line turns into one line on stderr.

:class:`UserError` is a mistake a user can fix (bad file, bad field, bad option): exit code 2, nothing written.
:class:`RunFailed` is a run that cannot go on (it diverged, or its reward keeps failing): exit code 1, the last good
checkpoint kept and no final model written. Library callers can catch both.
"""


class UserError(Exception):
    """A problem with the user's input, reported as a single line naming the file, line or field."""


class RunFailed(Exception):
    """A training run that stopped because it could not go on safely, reported as a single line."""
