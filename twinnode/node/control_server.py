"""The control socket's server: a Unix socket in the state directory, mode 0600, never a network.

Serves `handlers` (command name -> async fn(args) -> result mapping) with the line protocol of
`node.control_protocol`: each request line is parsed, handed to its handler and answered; a
refusal or a handler's TwinnodeError is an error reply, anything else an "internal" one
(logged), and the connection stays usable. Connections are limited in number, in line size
and in idle time.

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
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Mapping

from twinnode.errors import ControlError, TwinnodeError
from twinnode.node.control_protocol import (
    MAX_LINE,
    Handler,
    RequestRefused,
    encode_reply,
    error_reply,
    parse_request,
)

log = logging.getLogger("twinnode.control")

MAX_SUN_PATH = 107  # Linux sockaddr_un path limit, less the NUL

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
            self._server = await asyncio.start_unix_server(self._connection, sock=sock,
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

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """One connection (start_unix_server's callback): `_serve`, ending quietly when `stop`
        cancels it. Python 3.11's streams call `task.exception()` on a connection task that
        ended cancelled and log the CancelledError as an error with its traceback; one
        `ctl shutdown` in three did so while another connection was open."""
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._server is not None or task is None:
                raise  # not our stop: the loop is going down, let it
            task.uncancel()

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
        except RequestRefused as exc:
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
