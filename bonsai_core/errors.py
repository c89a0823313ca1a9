"""One exception type for bad input, always naming the file and the tensor."""

from __future__ import annotations

from .escape import escape_name as _one_line  # a name from a hostile file cannot break the line


class BonsaiFormatError(ValueError):
    """A checkpoint that cannot be read as a Bonsai model: corrupt, truncated, wrong variant, wrong shapes.

    ``path``, ``tensor`` and ``reason`` keep the raw values; the message is always one line."""

    def __init__(self, path: object, tensor: str | None, message: str) -> None:
        self.path = str(path)
        self.tensor = tensor
        self.reason = message
        where = _one_line(self.path) + (f", tensor '{_one_line(tensor)}'" if tensor else "")
        super().__init__(f"{where}: {_one_line(message)}")
