"""User-facing errors.

A `UserError` is a mistake in something the user gave us (a recipe, a file, a dataset row). The CLI prints its
message on one line and exits with status 2, without a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in user input. The message names the file, key path or row, and what is wrong."""
