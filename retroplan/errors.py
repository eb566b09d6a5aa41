"""The one exception type for user mistakes.

The CLI prints a `UserError` as a single sentence and exits non-zero; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for: a bad value, a missing file, a corrupt suite."""


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
