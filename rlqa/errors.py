"""User-facing errors.

A `UserError` is a mistake in something the user gave us (a recipe, a file, a dataset row). The CLI prints its
message on one line and exits with status 2, without a traceback. Everything else is a bug and keeps its traceback.
"""

from pathlib import Path


class UserError(Exception):
    """A mistake in user input. The message names the file, key path or row, and what is wrong."""


def read_user_text(path: Path) -> str:
    """A text file the user gave (a recipe, a run's logs) as str; bytes that are not UTF-8 are a UserError naming
    the file and the offset, not a UnicodeDecodeError traceback."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} is {raw[err.start:err.start + 1]!r})") from None
