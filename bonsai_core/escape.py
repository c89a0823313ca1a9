"""One way to show a name or a metadata value from a file on a terminal or in a log: escaped.

File names, tensor names, JSON metadata and Hub file names are chosen by whoever made the file. Raw,
an ESC sequence in one can recolour or rewrite the terminal, hide earlier lines, or forge log lines
(a newline); a bidirectional override can reverse what is shown. :func:`escape_name` turns every
character that is not printable (C0/C1 controls, ESC, DEL, line and paragraph separators, bidi and
other format characters) into its Python escape (``\\x1b``, ``\\n``, ``\\u202e``), so the text stays
one visible line. Every pack logger goes through :func:`escaping_logger`, which escapes the arguments
of each record (the format strings are the pack's own).
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["escape_name", "escaping_logger"]


def escape_name(value: object) -> str:
    """``str(value)`` with every non-printable character written as its escape; printable text unchanged."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _escaped_arg(arg: Any) -> Any:
    # numbers stay numbers (``%d``/``%.1f`` formats); anything shown as text is escaped
    if isinstance(arg, (bool, int, float)) or arg is None:
        return arg
    return escape_name(arg)


class EscapingFilter(logging.Filter):
    """Escapes the arguments of every record of the logger it is attached to (the message is formatted later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: _escaped_arg(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_escaped_arg(a) for a in record.args)
        elif not isinstance(record.msg, str) or not record.msg.isprintable():
            record.msg = escape_name(record.msg)
        return True


_FILTER = EscapingFilter()


def escaping_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`EscapingFilter` attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
