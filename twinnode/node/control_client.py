"""The control socket's client: one command to a running node, asyncio or blocking.

`request` (asyncio) and `request_sync` (blocking, for `twinnode ctl` and the lab's harness)
send one request line and return the reply's result, or raise ControlError with the node's
message; NodeNotRunning when nothing listens at the path. `socket_path` says where a node with
a given state directory listens.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Mapping

from twinnode.errors import ControlError, NodeNotRunning, ReplyTimeout
from twinnode.node.control_protocol import MAX_REPLY, decode_reply, encode_request
from twinnode.store.layout import StateLayout


def socket_path(state_dir: str | Path) -> Path:
    """Where a node with this state directory listens."""
    return StateLayout.of(state_dir).control_socket


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
        raise ReplyTimeout(f"timed out after {timeout:g} s waiting for the node at {path} to "
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
        raise ReplyTimeout(f"timed out after {timeout:g} s waiting for the node at {path} to "
                           f"answer {cmd!r}") from None
    finally:
        sock.close()
    return decode_reply(bytes(buf.split(b"\n", 1)[0]), cmd, path)
