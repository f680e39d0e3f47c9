"""Errors meant for users.

Everything a user can cause (a bad recipe, a missing weights file, a corrupt image, an unknown
plugin) raises a subclass of :class:`UserError`. The CLI catches exactly this type and prints
one line; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the one-line message shown by the CLI."""

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None):
        self.message = message
        self.hint = hint
        self.where = where
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}: ")
        parts.append(self.message)
        if self.hint:
            parts.append(f" (fix: {self.hint})")
        return "".join(parts)


class RecipeError(UserError):
    """An invalid recipe: names the file, the key path, the bad value and a suggestion."""


class PluginError(UserError):
    """A plugin that cannot be found, imported or used."""


class WeightsError(UserError):
    """Missing, unreadable or mismatching weights."""


class InputError(UserError):
    """An input image (or other user file) that cannot be used."""


class SamplingError(UserError):
    """Sampling went wrong in a way the user can address (NaN, for example)."""
