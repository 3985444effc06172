"""The error every reader raises for a file that does not follow its format."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file does not follow the expected format; the message names the file and item."""
