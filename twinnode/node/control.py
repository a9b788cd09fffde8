"""The control socket: line-delimited JSON over a Unix socket in the state directory, mode 0600.

Protocol: UTF-8 JSON, one object per line ("\\n"); a connection may carry one request or many,
answered in order.

    request   {"cmd": "status", "args": {...}, "id": <any>}        args and id are optional
    reply     {"ok": true, "result": {...}, "id": <echoed>}
              {"ok": false, "error": {"type": "...", "message": "..."}, "id": <echoed>}

Error types: "malformed" (not UTF-8, not JSON, or nested too deeply), "bad-request" (not an object, cmd missing,
unknown fields, args not an object, empty line), "unknown-command", the `reason` of a
TwinnodeError a handler raised ("control", "budget", "config", ...), and "internal" (any other
exception: a bug, logged with its traceback). After these the connection stays usable.
"too-large" (a line over `max_line` bytes), "busy" (over `max_connections`) and "idle"
(nothing received for `idle_timeout` s) are answered and then the connection is closed.
Handlers validate their args with `check_args`. What each of the node's commands returns is
documented in docs/CONTROL.md.

Permissions: the socket is bound inside a fresh 0700 directory (mkdtemp) beside its final
path, chmod-ed to 0600 and only then hard-linked into place (link never replaces an existing
file), so it is never reachable with wider permissions, and the process umask, which other
threads' file creation shares, is left alone. A socket file already at the path is removed only
when nothing answers on it (a node that died); a live node there makes `start` fail.
It never listens on a network address.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Collection, Mapping

from twinnode.errors import ControlError, NodeNotRunning, TwinnodeError

log = logging.getLogger("twinnode.control")

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20  # bytes in one request line
MAX_REPLY = 64 << 20  # bytes a client accepts in one reply line
MAX_SUN_PATH = 107  # Linux sockaddr_un path limit, less the NUL
REQUEST_FIELDS = frozenset({"cmd", "args", "id"})
EXAMPLE = '{"cmd": "status", "args": {}}'

Handler = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]


class _Refused(Exception):
    """A request the server answers with an error (type, message) without calling a handler."""

    def __init__(self, type_: str, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.type = type_
        self.rid = rid


def socket_path(state_dir: str | Path) -> Path:
    """Where a node with this state directory listens."""
    return Path(state_dir) / SOCKET_NAME


# ---- the byte format (pure) -----------------------------------------------------------------

def encode_request(cmd: str, args: Mapping[str, Any] | None = None) -> bytes:
    """One request line."""
    return json.dumps({"cmd": cmd, "args": dict(args or {})}, allow_nan=False).encode() + b"\n"


def parse_request(line: bytes, commands: Collection[str]) -> tuple[str, dict[str, Any], Any]:
    """(cmd, args, id) from one request line; _Refused with a clear message if it is not one."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused("malformed", "request is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        if not line.strip():
            raise _Refused("bad-request", f"empty request line; send e.g. {EXAMPLE}") from None
        raise _Refused("malformed", f"request is not valid JSON ({exc.msg} at column "
                                    f"{exc.colno}); send one object per line, e.g. "
                                    f"{EXAMPLE}") from None
    except RecursionError:
        raise _Refused("malformed", "request is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _Refused("malformed", f"request is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _Refused("bad-request", f"request must be a JSON object like {EXAMPLE}, "
                                      f"not {type(doc).__name__}")
    rid = doc.get("id")
    try:
        encode_reply({"id": rid})
    except RecursionError:
        raise _Refused("malformed", "request id is nested too deeply to echo") from None
    unknown = sorted(set(doc) - REQUEST_FIELDS)
    if unknown:
        raise _Refused("bad-request", f"unknown request field(s) {', '.join(map(repr, unknown))}"
                                      f"; a request has cmd, args and optionally id", rid)
    cmd, args = doc.get("cmd"), doc.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise _Refused("bad-request", f"request needs \"cmd\" (a command name), "
                                      f"e.g. {EXAMPLE}", rid)
    if cmd not in commands:
        raise _Refused("unknown-command", f"unknown command {cmd!r}; commands: "
                                          f"{', '.join(sorted(commands))}", rid)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Refused("bad-request", f"\"args\" must be a JSON object, not "
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
        err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
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
        types = spec[name] if isinstance(spec[name], tuple) else (spec[name],)
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


# ---- server ---------------------------------------------------------------------------------

class ControlServer:
    """Serve `handlers` (command name -> async fn(args) -> result dict) on a Unix socket."""

    def __init__(self, path: str | Path, handlers: Mapping[str, Handler], *,
                 max_line: int = MAX_LINE, idle_timeout: float = 60.0,
                 max_connections: int = 32, grace: float = 2.0) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.grace = grace
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Bind the socket (0600), refusing if a live node already answers at the path."""
        if self._server is not None:
            raise ControlError(f"control server at {self.path} is already started")
        sock = _bind_private(self.path)
        try:
            info = os.stat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                           limit=self.max_line + 1)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control socket listening at %s", self.path)

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish (up to `grace` s), remove the
        socket file; safe to call twice, and from inside a handler (e.g. shutdown)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        me = asyncio.current_task()
        for task in self._conns - self._busy - {me}:
            task.cancel()
        busy = self._busy - {me}
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.grace)
            for task in late:
                task.cancel()
        others = list(self._conns - {me})
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        self._unlink()
        log.info("control socket at %s closed", self.path)

    async def __aenter__(self) -> "ControlServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if len(self._conns) > self.max_connections:
                await self._send(writer, error_reply(
                    "busy", f"too many control connections (limit {self.max_connections})"))
                return
            while self._server is not None:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial  # a last request without "\n", then EOF
                    if not line.strip():
                        return
                except asyncio.LimitOverrunError:
                    await self._send(writer, error_reply(
                        "too-large", f"request line exceeds {self.max_line} bytes; "
                                     f"closing the connection"))
                    return
                except asyncio.TimeoutError:
                    await self._send(writer, error_reply(
                        "idle", f"no request for {self.idle_timeout:g} s; closing"))
                    return
                self._busy.add(task)
                try:
                    await self._send(writer, await self._answer(line))
                finally:
                    self._busy.discard(task)
                if reader.at_eof():
                    return
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> bytes:
        """The encoded reply to one request line; never raises (except cancellation)."""
        try:
            return await self._reply_to(line)
        except RecursionError:  # an `id` too deeply nested to echo
            return encode_reply(error_reply("malformed", "request id is nested too deeply"))

    async def _reply_to(self, line: bytes) -> bytes:
        rid = None
        try:
            cmd, args, rid = parse_request(line, self.handlers)
        except _Refused as exc:
            return encode_reply(error_reply(exc.type, str(exc), exc.rid))
        try:
            result = await self.handlers[cmd](args)
            if not isinstance(result, Mapping):
                raise TypeError(f"handler returned {type(result).__name__}, not a mapping")
            reply = {"ok": True, "result": result} | ({} if rid is None else {"id": rid})
            return encode_reply(reply)
        except TwinnodeError as exc:
            return encode_reply(error_reply(exc.reason, str(exc), rid))
        except Exception:
            log.exception("control command %r failed", cmd)
            return encode_reply(error_reply(
                "internal", f"internal error while running {cmd!r}; see the node's log", rid))

    async def _send(self, writer: asyncio.StreamWriter, data: bytes | dict[str, Any]) -> None:
        writer.write(data if isinstance(data, bytes) else encode_reply(data))
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    def _unlink(self) -> None:
        """Remove the socket file if it is still ours (a newer node's is left alone)."""
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(self.path)
            if self._inode == (info.st_dev, info.st_ino):
                os.unlink(self.path)
        self._inode = None


def _bind_private(path: Path) -> socket.socket:
    """A listening-ready socket at `path`, mode 0600 from the moment it is reachable."""
    if len(os.fsencode(path)) > MAX_SUN_PATH:
        raise ControlError(f"control socket path {path} is too long for a Unix socket "
                           f"({len(os.fsencode(path))} bytes); use a shorter state directory")
    if not path.parent.is_dir():
        raise ControlError(f"cannot create the control socket: {path.parent} is not a directory")
    _remove_stale(path)
    tmpdir = tempfile.mkdtemp(prefix=".c", dir=path.parent)  # mode 0700
    tmp = os.path.join(tmpdir, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(tmp)) > MAX_SUN_PATH:
            raise ControlError(f"control socket path {path} is too long for a Unix socket")
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ControlError(f"another control socket appeared at {path} while starting; "
                               f"is another node starting on this state directory?") from None
        sock.setblocking(False)
        return sock
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise ControlError(f"cannot create the control socket {path}: {exc}") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.rmdir(tmpdir)


def _remove_stale(path: Path) -> None:
    """Delete a socket file nobody answers on; refuse if a node answers, or if it is no socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.warning("removing stale control socket %s (nothing answers on it)", path)
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"cannot check the existing control socket {path}: {exc}") from None
    finally:
        probe.close()
    raise ControlError(f"a node is already running at {path}")


# ---- client ---------------------------------------------------------------------------------

def _not_running(path: str | Path, exc: OSError) -> ControlError:
    if isinstance(exc, FileNotFoundError):
        return NodeNotRunning(f"no node is running at {path} (socket file not found)")
    if isinstance(exc, ConnectionRefusedError):
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return NodeNotRunning(f"no node is running at {path} (it is not a socket)")
        return NodeNotRunning(f"no node is running at {path} (connection refused: the socket "
                              f"is left over from a node that stopped)")
    if isinstance(exc, PermissionError):
        return ControlError(f"permission denied on {path}; the control socket is mode 0600, "
                            f"run ctl as the node's user")
    return ControlError(f"cannot connect to the node at {path}: {exc}")


async def request(path: str | Path, cmd: str, args: Mapping[str, Any] | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the node at `path` and return its result (asyncio)."""
    data = encode_request(cmd, args)
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REPLY)
            except OSError as exc:
                raise _not_running(path, exc) from None
            try:
                writer.write(data)
                with contextlib.suppress(ConnectionError):  # a reply may be waiting (busy)
                    await writer.drain()
                line = await reader.readline()
            except OSError as exc:
                raise ControlError(f"connection to the node at {path} failed: {exc}") from None
            finally:
                writer.close()
    except TimeoutError:
        raise ControlError(f"timed out after {timeout:g} s waiting for the node at {path} to "
                           f"answer {cmd!r}") from None
    return decode_reply(line, cmd, path)


def request_sync(path: str | Path, cmd: str, args: Mapping[str, Any] | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the node at `path` and return its result (blocking; for the CLI)."""
    data = encode_request(cmd, args)
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except TimeoutError:
            raise
        except OSError as exc:
            raise _not_running(path, exc) from None
        buf = bytearray()
        try:
            with contextlib.suppress(ConnectionError):  # a reply may be waiting (busy)
                sock.sendall(data)
            while b"\n" not in buf and len(buf) <= MAX_REPLY:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise
        except OSError as exc:
            raise ControlError(f"connection to the node at {path} failed: {exc}") from None
    except TimeoutError:
        raise ControlError(f"timed out after {timeout:g} s waiting for the node at {path} to "
                           f"answer {cmd!r}") from None
    finally:
        sock.close()
    return decode_reply(bytes(buf.split(b"\n", 1)[0]), cmd, path)
