"""The one exception type that means "the user gave a bad value" (CLI exit status 2)."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: the message is one line naming the value and what is allowed."""
