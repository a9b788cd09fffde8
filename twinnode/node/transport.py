"""The node's ZeroMQ sockets (zmq.asyncio) with CURVE and a ZAP allow-list: bytes only.

    PUB     bound, CURVE server   own twins and heartbeats, to every subscriber
    ROUTER  bound, CURVE server   catch-up requests in; stored envelopes + end marker out
    SUB     connected, CURVE client to every peer's PUB, subscribed to `twin:` and `hb:`
    DEALER  connected, CURVE client, one per peer's ROUTER: our catch-up requests

The ZAP handler (`zmq.auth.asyncio.AsyncioAuthenticator`, started before anything binds) lets a
CURVE client finish the handshake only if its public key is one of the pinned peers'; anyone
else never reads a byte and is reported to `on_denied`. Every socket has MAXMSGSIZE (a peer
sending a bigger frame is disconnected; the node derives it from its schema and [network]
max_rows; the ROUTER's is `request_bytes`, as a catch-up request has no payload), a receive high-water mark of `recv_hwm` (100) and a send high-water mark of
`hwm` messages, except the ROUTER's: `reply_hwm` (66, one catch-up batch and its end) per
requester. So what a pinned peer can make us buffer is about recv_hwm x MAXMSGSIZE inbound
and reply_hwm x MAXMSGSIZE of replies it does not read, per connection, not the
10,000 x 64 MiB that one HWM for both directions allowed; a reply that finds the queue full
for SEND_TIMEOUT is abandoned. PUB drops messages for a slow
subscriber by design (catch-up repairs that); DEALERs are `immediate`, so a request to a peer
that is down fails at once instead of queueing and arriving stale. This module never looks
inside a message: framing, signatures and meaning are `wire.py`'s and the node's.

libzmq gives up on a connection for good after a ZAP denial, a failed CURVE handshake or a
protocol error (a frame over MAXMSGSIZE): it retries only lost TCP connections. So the SUB
and every DEALER carry a socket monitor; `link_events` drains what they saw (without
blocking), and `relink` makes one peer's connections again (`node.links`
decides when) on new sockets.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable, Iterable, NamedTuple, Sequence

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from twinnode.errors import TransportError

log = logging.getLogger("twinnode.transport")

ZAP_DOMAIN = "twinnode"
SUBSCRIPTIONS = (b"twin:", b"hb:")
SEND_TIMEOUT = 5.0  # seconds a catch-up reply may wait for room in the ROUTER's queue
RECV_HWM = 100  # messages queued per inbound connection (a catch-up batch is 64 + its end)
REBIND_TIMEOUT = 5.0  # seconds to get a port back after unbinding it (libzmq frees it async)
REPLY_HWM = 66  # catch-up reply messages queued per requester (a batch of 64 + its end + 1)

LINK_EVENTS = (zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
               | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

DeniedFn = Callable[[bytes], None]  # called with the Z85 key of a refused CURVE client


class LinkEvent(NamedTuple):
    """What a socket monitor saw: `role` "sub" (endpoint: a peer's PUB) or "dealer" (`peer`
    set), the zmq event number and its value (a ZAP status or protocol error code)."""

    role: str
    peer: str | None
    endpoint: str
    event: int
    value: int


class AllowList:
    """ZAP credentials provider: accept exactly the pinned CURVE public keys (Z85)."""

    def __init__(self, keys: Iterable[bytes], on_denied: DeniedFn | None = None) -> None:
        self.keys = frozenset(bytes(k) for k in keys)
        self.on_denied = on_denied
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth's hook: `key` is the client's Z85 public key."""
        if key in self.keys:
            return True
        self.denied += 1
        if self.on_denied is not None:
            self.on_denied(key)
        return False


class Transport:
    """The four socket roles of one node; `start` binds, `connect` adds a peer, `close` ends."""

    def __init__(self, curve_public: bytes, curve_secret: bytes, allowed: Iterable[bytes], *,
                 hwm: int = 10_000, recv_hwm: int = RECV_HWM, reply_hwm: int = REPLY_HWM,
                 max_message_bytes: int = -1, request_bytes: int | None = None,
                 on_denied: DeniedFn | None = None) -> None:
        self._public, self._secret = curve_public, curve_secret
        self.allow = AllowList(allowed, on_denied)
        self.hwm, self.recv_hwm, self.max_message_bytes = hwm, recv_hwm, max_message_bytes
        self.reply_hwm, self.request_bytes = reply_hwm, request_bytes
        self.ctx: zmq.asyncio.Context | None = None
        self._auth: AsyncioAuthenticator | None = None
        self.pub: zmq.asyncio.Socket | None = None
        self.router: zmq.asyncio.Socket | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.dealers: dict[str, zmq.asyncio.Socket] = {}
        self.endpoints: dict[str, str] = {}
        self._subscribed: dict[str, tuple[str, bytes]] = {}  # peer: (its PUB, its server key)
        self._monitors: dict[str | None, tuple[zmq.asyncio.Socket, zmq.Socket]] = {}

    async def start(self, pub: str, router: str) -> None:
        """Start the ZAP handler, then bind PUB and ROUTER and open the SUB socket."""
        if self.ctx is not None:
            raise TransportError("transport already started")
        self.ctx = zmq.asyncio.Context()
        try:
            self._auth = AsyncioAuthenticator(self.ctx, log=logging.getLogger("zmq.auth"))
            self._auth.start()
            self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.allow)
            self.pub = self._server(zmq.PUB, pub, "pub")
            self.router = self._server(zmq.ROUTER, router, "router", sndhwm=self.reply_hwm,
                                       maxmsgsize=self.request_bytes)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sub = self._new_sub()
        except BaseException:
            self.close()
            raise

    def connect(self, peer: str, pub_address: str, router_address: str,
                server_key: bytes) -> None:
        """Subscribe to `peer`'s PUB and open a DEALER to its ROUTER (CURVE, its server key)."""
        if self.sub is None or self.ctx is None:
            raise TransportError("transport not started")
        if peer in self.dealers:
            raise TransportError(f"peer {peer!r} is already connected")
        try:
            _subscribe(self.sub, pub_address, server_key)
            self.dealers[peer] = self._new_dealer(peer, router_address, server_key)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to peer {peer!r} at {pub_address} / "
                                 f"{router_address}: {exc}") from None
        self._subscribed[peer] = (pub_address, server_key)

    def disconnect(self, peer: str) -> None:
        """Stop subscribing to `peer`'s PUB and close our DEALER to its ROUTER (new SUB
        without it: never `disconnect()`, see `relink`)."""
        if self._subscribed.pop(peer, None) is not None:
            self._renew_sub()
        dealer = self.dealers.pop(peer, None)
        if dealer is not None:
            self._unmonitor(peer, dealer)
            dealer.close(linger=0)

    def relink(self, peer: str, pub_address: str, router_address: str, server_key: bytes,
               roles: Iterable[str] = ("sub", "dealer")) -> None:
        """Make our connection(s) to `peer`'s PUB ("sub") and ROUTER ("dealer") again, on new
        sockets: libzmq shakes hands anew. The old socket is closed, never disconnected:
        `disconnect()` on a socket that holds part of a message aborts the process in libzmq
        (`Assertion failed: !_more (src/fq.cpp)`, zeromq/libzmq#3485). A receive pending on
        the old socket goes on on the new one (`recv_sub`, `recv_reply`); what the old one
        held unread is lost, and catch-up fetches it again. The SUB serves every peer, so a
        new SUB connects to all of them."""
        roles = set(roles)
        if peer in self._subscribed:
            self._subscribed[peer] = (pub_address, server_key)
        if "sub" in roles:
            self._renew_sub()
        dealer = self.dealers.get(peer)
        if "dealer" in roles and dealer is not None:
            self._unmonitor(peer, dealer)
            self.dealers[peer] = self._new_dealer(peer, router_address, server_key)
            dealer.close(linger=0)

    def link_events(self) -> list[LinkEvent]:
        """Every event the SUB's and the DEALERs' monitors saw since the last call (no wait)."""
        out = []
        for peer, (_, reader) in list(self._monitors.items()):
            while True:
                try:
                    msg = parse_monitor_message(reader.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                except zmq.ZMQError:  # the monitored socket is gone
                    break
                endpoint = bytes(msg["endpoint"]).decode("utf-8", "replace")
                out.append(LinkEvent("sub" if peer is None else "dealer", peer, endpoint,
                                     int(msg["event"]), int(msg["value"])))
        return out

    def allow_only(self, keys: Iterable[bytes]) -> None:
        """Replace the ZAP allow-list; `rebind` makes connected clients shake hands again."""
        self.allow.keys = frozenset(bytes(k) for k in keys)

    async def rebind(self, timeout: float = REBIND_TIMEOUT) -> None:
        """Unbind and bind PUB and ROUTER again at their addresses: every inbound connection
        closes (libzmq ends the sessions of a listener it unbinds), and each client that
        reconnects passes the ZAP allow-list again. The sockets stay open throughout (a send
        meanwhile reaches no one); libzmq frees the port in its I/O thread, so binding again
        is retried until `timeout`."""
        for role, sock in (("pub", self.pub), ("router", self.router)):
            endpoint = self.endpoints.get(role)
            if sock is None or endpoint is None:
                continue
            with contextlib.suppress(zmq.ZMQError):
                sock.unbind(endpoint)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    sock.bind(endpoint)
                    break
                except zmq.ZMQError as exc:
                    if asyncio.get_running_loop().time() > deadline:
                        raise TransportError(f"cannot bind the {role} socket to {endpoint} "
                                             f"again: {exc}") from None
                await asyncio.sleep(0.02)

    # ---- traffic (bytes only) ----

    async def publish(self, frames: Sequence[bytes]) -> None:
        """Send on PUB; never blocks (a slow subscriber loses messages, catch-up repairs)."""
        await self._need(self.pub).send_multipart(frames)

    async def recv_sub(self) -> list[bytes]:
        return await self._recv(lambda: self._need(self.sub))

    async def recv_request(self) -> tuple[bytes, list[bytes]]:
        """(routing id, frames) of the next message on the ROUTER."""
        routing_id, *frames = await self._need(self.router).recv_multipart()
        return routing_id, frames

    async def reply(self, routing_id: bytes, frames: Sequence[bytes]) -> bool:
        """Send to one requester through the ROUTER; False if it is gone or not reading."""
        try:
            await asyncio.wait_for(self._need(self.router).send_multipart(
                [routing_id, *frames]), SEND_TIMEOUT)
            return True
        except (zmq.ZMQError, asyncio.TimeoutError) as exc:
            log.debug("catch-up reply not sent: %s", exc)
            return False

    async def request(self, peer: str, frames: Sequence[bytes]) -> bool:
        """Send to `peer`'s ROUTER; False at once if there is no connection to it."""
        try:
            await self._dealer(peer).send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    async def recv_reply(self, peer: str) -> list[bytes]:
        return await self._recv(lambda: self._dealer(peer))

    @staticmethod
    async def _recv(current: Callable[[], zmq.asyncio.Socket]) -> list[bytes]:
        """The next message on `current()`; when `relink` replaced that socket meanwhile
        (closing the old one cancels its pending receive), go on on the new one."""
        while True:
            sock = current()
            try:
                return await sock.recv_multipart()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling() == 0 and current() is not sock:
                    continue  # our socket was replaced, not our task cancelled
                raise

    def close(self) -> None:
        """Close every socket (linger 0) and stop the ZAP handler; safe to call twice."""
        for mon, _ in self._monitors.values():
            mon.close(linger=0)
        self._monitors = {}
        for sock in [self.pub, self.router, self.sub, *self.dealers.values()]:
            if sock is not None:
                sock.close(linger=0)
        self.pub = self.router = self.sub = None
        self.dealers = {}
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None

    # ---- internals ----

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        assert self.ctx is not None
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.recv_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        return sock

    def _server(self, kind: int, endpoint: str, role: str,
                sndhwm: int | None = None, maxmsgsize: int | None = None) -> zmq.asyncio.Socket:
        sock = self._socket(kind)
        if sndhwm is not None:  # before bind: a pipe takes the mark it was created with
            sock.setsockopt(zmq.SNDHWM, sndhwm)
        if maxmsgsize is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot bind the {role} socket to {endpoint}: {exc}") from None
        self.endpoints[role] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _client(self, sock: zmq.asyncio.Socket, server_key: bytes | None = None) -> None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        if server_key is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)

    def _renew_sub(self) -> None:
        """Replace the SUB by a new one connected to every peer in `_subscribed`."""
        if self.sub is None:
            return
        old = self.sub
        self._unmonitor(None, old)  # first: the new SUB's monitor takes its place
        self.sub = self._new_sub()
        old.close(linger=0)

    def _new_sub(self) -> zmq.asyncio.Socket:
        """A SUB for our subscriptions, monitored, connected to every peer's PUB."""
        sub = self._socket(zmq.SUB)
        self._client(sub)
        for prefix in SUBSCRIPTIONS:
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
        self._monitor(None, sub)
        for pub_address, server_key in self._subscribed.values():
            _subscribe(sub, pub_address, server_key)
        return sub

    def _new_dealer(self, peer: str, router_address: str,
                    server_key: bytes) -> zmq.asyncio.Socket:
        """A DEALER to `peer`'s ROUTER, monitored, connected."""
        dealer = self._socket(zmq.DEALER)
        self._client(dealer, server_key)
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        self._monitor(peer, dealer)
        dealer.connect(router_address)
        return dealer

    def _monitor(self, peer: str | None, sock: zmq.asyncio.Socket) -> None:
        """Watch `sock`'s links (`link_events`); `peer` None is the SUB."""
        mon = sock.get_monitor_socket(LINK_EVENTS)
        self._monitors[peer] = (mon, zmq.Socket.shadow(mon.underlying))

    def _unmonitor(self, peer: str | None, sock: zmq.asyncio.Socket) -> None:
        watched = self._monitors.pop(peer, None)
        if watched is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            watched[0].close(linger=0)

    def _dealer(self, peer: str) -> zmq.asyncio.Socket:
        try:
            return self.dealers[peer]
        except KeyError:
            raise TransportError(f"no connection to peer {peer!r}") from None

    @staticmethod
    def _need(sock: zmq.asyncio.Socket | None) -> zmq.asyncio.Socket:
        if sock is None:
            raise TransportError("transport is closed")
        return sock


def _subscribe(sub: zmq.asyncio.Socket, pub_address: str, server_key: bytes) -> None:
    """Connect `sub` to a peer's PUB under that peer's CURVE server key."""
    sub.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sub.connect(pub_address)  # the server key is read at connect time
