"""One exception type for bad input, always naming the file and the tensor.

Its type reads as ``BonsaiFormatError`` wherever it is shown. ComfyUI loads a custom node package
under a module name made from its folder path (``/home/u/ComfyUI/custom_nodes/bonsai-image`` with
dots replaced), and its error report prints an exception's type as ``<module>.<qualname>`` unless the
module is ``builtins`` -- so the plain type is presented as a builtin's would be. Pickling goes
through the class's real module (:meth:`BonsaiFormatError.__reduce__`), which is unaffected.
"""

from __future__ import annotations

import importlib
from typing import Any

from .escape import escape_name as _one_line  # a name from a hostile file cannot break the line


def _present_plainly(cls: type) -> None:
    """Keep the real module for pickling, and show the type by its bare name (see the module docstring)."""
    cls._home_module = cls.__module__  # type: ignore[attr-defined]
    cls.__module__ = "builtins"


def _rebuild(module: str, qualname: str, path: str, tensor: str | None, reason: str) -> BonsaiFormatError:
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    err = BonsaiFormatError.__new__(cls)
    BonsaiFormatError.__init__(err, path, tensor, reason)
    return err


class BonsaiFormatError(ValueError):
    """A checkpoint that cannot be read as a Bonsai model: corrupt, truncated, wrong variant, wrong shapes.

    ``path``, ``tensor`` and ``reason`` keep the raw values; the message is always one line."""

    def __init__(self, path: object, tensor: str | None, message: str) -> None:
        self.path = str(path)
        self.tensor = tensor
        self.reason = message
        where = _one_line(self.path) + (f", tensor '{_one_line(tensor)}'" if tensor else "")
        super().__init__(f"{where}: {_one_line(message)}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _present_plainly(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        home = type(self)._home_module  # type: ignore[attr-defined]
        return (_rebuild, (home, type(self).__qualname__, self.path, self.tensor, self.reason), self.__dict__)


_present_plainly(BonsaiFormatError)
