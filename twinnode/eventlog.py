"""One log line per event: `ts=... level=... event=... key=value ...`, or one JSON object.

`event(log, "twin.accepted", peer="bob", seq=3)` logs with a stable event name and fields;
messages from other loggers (store, control, zmq) come out in the same format with
`event=<logger name>`. Values with spaces or quotes are quoted, so a line splits cleanly.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message",
                                                                                  "asctime"}


def event(log: logging.Logger, name: str, msg: str = "", *, level: int = logging.INFO,
          **fields: Any) -> None:
    """Log one event with its name and fields (kept structured until formatted)."""
    if log.isEnabledFor(level):
        log.log(level, msg, extra={"event": name, "fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "event": getattr(record, "event", record.name),
    }
    out.update(getattr(record, "fields", {}) or {})
    message = record.getMessage()
    if message:
        out["msg"] = message
    if record.exc_info:
        out["traceback"] = logging.Formatter().formatException(record.exc_info)
    return out


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """`key=value` pairs on one line; strings with spaces, quotes or newlines are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def configure(level: str = "info", fmt: str = "kv", stream: IO[str] | None = None) -> None:
    """Send every logger's records to `stream` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.getLogger("zmq.auth").setLevel(logging.WARNING)  # we log ZAP decisions ourselves
    logging.getLogger("asyncio").setLevel(logging.WARNING)
