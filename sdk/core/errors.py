"""The user-facing error types that cross layers. Each is a ``ValueError`` whose message names the
input or setting and says what was expected; they live here, at the bottom, so that a lower layer
(a checkpoint loader, the video writer) can raise the type its callers already catch."""

from __future__ import annotations

__all__ = ["GeneratorError", "InputError"]


class InputError(ValueError):
    """A user input (video, frames, option) is missing, unreadable or not what was expected."""


class GeneratorError(ValueError):
    """A Generator cannot be built or run with the requested settings."""
