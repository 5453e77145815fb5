"""Errors the user can act on.

Every failure caused by input (a file, a setting, a missing weight file) is an
`NSTError` whose message is one line naming what is wrong and where.  The CLI
prints that line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class NSTError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ImageError(NSTError):
    """An image file that cannot be used (missing, truncated, not an image, ...)."""


class WeightsError(NSTError):
    """Pretrained weights that cannot be found or loaded."""


class ConfigError(NSTError):
    """An invalid setting: unknown layer, negative weight, bad option value."""


class DivergedError(NSTError):
    """The optimisation produced a NaN or infinite loss."""
