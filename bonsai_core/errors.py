"""One exception type for bad input, always naming the file and the tensor."""

from __future__ import annotations


class BonsaiFormatError(ValueError):
    """A checkpoint that cannot be read as a Bonsai model: corrupt, truncated, wrong variant, wrong shapes."""

    def __init__(self, path: object, tensor: str | None, message: str) -> None:
        self.path = str(path)
        self.tensor = tensor
        self.reason = message
        where = f"{self.path}" + (f", tensor '{tensor}'" if tensor else "")
        super().__init__(f"{where}: {message}")
