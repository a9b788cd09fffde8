"""The control socket's protocol: line-delimited JSON requests and replies, checked arguments.

Protocol: UTF-8 JSON, one object per line ("\\n"); a connection may carry one request or many,
answered in order.

    request   {"cmd": "status", "args": {...}, "id": <any>}        args and id are optional
    reply     {"ok": true, "result": {...}, "id": <echoed>}
              {"ok": false, "error": {"type": "...", "message": "..."}, "id": <echoed>}

Error types: "malformed" (not UTF-8, not JSON, or nested too deeply), "bad-request" (not an
object, cmd missing, unknown fields, args not an object, empty line), "unknown-command", the
`reason` of a TwinnodeError a handler raised ("control", "budget", "config", ...), and
"internal" (any other exception: a bug, logged with its traceback). After these the
connection stays usable. "too-large" (a line over the server's `max_line` bytes), "busy" (over
its `max_connections`) and "idle" (nothing received for its `idle_timeout` s) are answered and
then the connection is closed. Handlers validate their args with `check_args`. What each of
the node's commands returns is documented in docs/CONTROL.md.

Pure: bytes and dicts in and out. The server is `node.control_server`, the clients (`twinnode
ctl`, the lab's harness) use `node.control_client`; neither side needs the other's imports.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Awaitable, Callable, Collection, Mapping

from twinnode.errors import ControlError

MAX_LINE = 1 << 20  # bytes in one request line
MAX_REPLY = 64 << 20  # bytes a client accepts in one reply line
REQUEST_FIELDS = frozenset({"cmd", "args", "id"})
EXAMPLE = '{"cmd": "status", "args": {}}'

Handler = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]  # args -> result


class RequestRefused(Exception):
    """A request the server answers with an error (type, message) without calling a handler."""

    def __init__(self, type_: str, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.type = type_
        self.rid = rid


def encode_request(cmd: str, args: Mapping[str, Any] | None = None) -> bytes:
    """One request line."""
    return json.dumps({"cmd": cmd, "args": dict(args or {})}, allow_nan=False).encode() + b"\n"


def parse_request(line: bytes, commands: Collection[str]) -> tuple[str, dict[str, Any], Any]:
    """(cmd, args, id) from one request line; RequestRefused with a clear message if it is
    not one."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestRefused("malformed", "request is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        if not line.strip():
            raise RequestRefused("bad-request",
                                 f"empty request line; send e.g. {EXAMPLE}") from None
        raise RequestRefused("malformed", f"request is not valid JSON ({exc.msg} at column "
                                          f"{exc.colno}); send one object per line, e.g. "
                                          f"{EXAMPLE}") from None
    except RecursionError:
        raise RequestRefused("malformed", "request is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RequestRefused("malformed", f"request is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RequestRefused("bad-request", f"request must be a JSON object like {EXAMPLE}, "
                                            f"not {type(doc).__name__}")
    rid = doc.get("id")
    try:
        encode_reply({"id": rid})
    except RecursionError:
        raise RequestRefused("malformed", "request id is nested too deeply to echo") from None
    unknown = sorted(set(doc) - REQUEST_FIELDS)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise RequestRefused("bad-request", f"unknown request field(s) {names}; a request "
                                            "has cmd, args and optionally id", rid)
    cmd, args = doc.get("cmd"), doc.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise RequestRefused("bad-request", f"request needs \"cmd\" (a command name), "
                                            f"e.g. {EXAMPLE}", rid)
    if cmd not in commands:
        raise RequestRefused("unknown-command", f"unknown command {cmd!r}; commands: "
                                                f"{', '.join(sorted(commands))}", rid)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RequestRefused("bad-request", f"\"args\" must be a JSON object, not "
                                            f"{type(args).__name__}", rid)
    return cmd, args, rid


def error_reply(type_: str, message: str, rid: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": False, "error": {"type": type_, "message": message}}
    return reply if rid is None else reply | {"id": rid}


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """One reply line; numpy values, tuples, sets and paths become plain JSON, NaN null."""
    return json.dumps(_plain(reply), allow_nan=False).encode() + b"\n"


def decode_reply(line: bytes, cmd: str, where: str | Path) -> dict[str, Any]:
    """The result of a reply line, or ControlError with the server's message."""
    if not line.strip():
        raise ControlError(f"the node at {where} closed the connection without answering "
                           f"{cmd!r}")
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"the node at {where} sent an unreadable reply to {cmd!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise ControlError(f"the node at {where} sent a reply without \"ok\" to {cmd!r}")
    if not doc["ok"]:
        error = doc.get("error")
        err: Mapping[str, Any] = error if isinstance(error, dict) else {}
        message = str(err.get("message", "failed (no message)"))
        # handlers' messages often name the command already (check_args does): say it once
        exc = ControlError(message if message.startswith(f"{cmd}: ") else f"{cmd}: {message}")
        exc.remote_type = str(err.get("type", "error"))  # type: ignore[attr-defined]
        raise exc
    result = doc.get("result", {})
    return result if isinstance(result, dict) else {"value": result}


def check_args(cmd: str, args: Mapping[str, Any], spec: Mapping[str, type | tuple[type, ...]],
               required: Collection[str] = ()) -> dict[str, Any]:
    """A handler's args checked against {name: type(s)}: ControlError naming what is wrong
    (an unknown name, a missing one, a wrong type), so bad args get a clear error reply."""
    unknown = sorted(set(args) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise ControlError(f"{cmd}: unknown argument(s) {', '.join(unknown)}; arguments: {known}")
    missing = [name for name in required if name not in args]
    if missing:
        raise ControlError(f"{cmd}: missing argument(s) {', '.join(missing)}")
    for name, value in args.items():
        kind = spec[name]
        types: tuple[type, ...] = kind if isinstance(kind, tuple) else (kind,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(t.__name__ for t in types)
            raise ControlError(f"{cmd}: argument {name} must be {wanted}, got "
                               f"{json.dumps(value)[:60]}")
    return dict(args)


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_plain(v) for v in (sorted(x, key=repr) if isinstance(x, (set, frozenset))
                                    else x)]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy arrays and scalars, without importing numpy
        return _plain(x.tolist())
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")
