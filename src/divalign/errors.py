"""The one exception type for mistakes a user can fix (bad file, bad field, bad option).

The command line turns it into one line on stderr and exit code 2; library callers can catch it.
"""


class UserError(Exception):
    """A problem with the user's input, reported as a single line naming the file, line or field."""
