"""Keeping database passwords out of log lines and error messages."""

from __future__ import annotations

import logging
import re
import traceback

# ``scheme://user:password@``: the password is what lies between ``user:`` and ``@``.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)[^@\s'\"]+(@)")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***\2", text)


class PasswordRedactor(logging.Filter):
    """Replaces URL passwords in a log record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # a malformed record: let logging report it as it would
            pass
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text)
