"""Links that heal: each pinned peer's SUB and DEALER connections, watched and rebuilt.

libzmq reconnects a lost TCP connection by itself, but gives up on one for good after a ZAP
denial, a failed CURVE handshake or a protocol error (one frame over our MAXMSGSIZE): the
peer then stays silent until one side restarts. So, per pinned peer:

    silent    no heartbeat nor any other word (a new twin it signed, live; a frame on our
              DEALER to it: `Catchup.on_word`) for `after` seconds ([network] relink_after
              heartbeats), or never one since the link was made (a heartbeat queued behind a
              burst of twins is no silence: relinking then dropped the burst and the catch-up
              reply in flight): its SUB and DEALER connections are dropped and made
              again (`Transport.relink`), then again after 2x, 4x ... that wait, at most
              `backoff_max` ([network] relink_max) apart, until it is heard again
    dealer    the peer is heard but our DEALER to its ROUTER has had no handshake for `after`
              seconds (a reply frame over our limit cut it): the DEALER alone, same backoff
    events    the socket monitors (`Transport.link_events`) say why: a ZAP denial (the peer
              has not pinned our CURVE key), a CURVE handshake that failed (the key pinned
              here for it is wrong), a connection libzmq dropped without retrying (a protocol
              error), or a peer that is not reachable (libzmq retries)

`Links` holds the state and decides, loop-free, with an injectable clock; `Links.step` runs
one tick against a transport; `keep` is the asyncio loop that ticks. `status` rows say
"disconnected since ..., last error ..." per peer. The denial and the link's losses are
logged once per change, and at most once a minute while they repeat.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import zmq

from twinnode.eventlog import event
from twinnode.node.catchup import PeerState
from twinnode.node.config import NodeConfig
from twinnode.node.transport import DeniedFn, LinkEvent, Transport
from twinnode.trust.identity import Identity, Peer
from twinnode.wire import WireLimits, frame_limit

log = logging.getLogger("twinnode.node")

ROLES = ("sub", "dealer")
LOG_WINDOW = 60.0   # seconds between two lines about the same peer's same trouble
_CRYPTO = {zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE}


class Relinker(Protocol):
    """What `Links.step` needs of `node.transport.Transport`."""

    def link_events(self) -> list[LinkEvent]: ...

    def relink(self, peer: str, pub_address: str, router_address: str, server_key: bytes,
               roles: Iterable[str] = ROLES) -> None: ...


@dataclass
class Link:
    """One peer's two connections as this node sees them."""

    name: str
    made: float                                   # monotonic: when the link was made
    up: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ROLES, False))
    changed: dict[str, float] = field(default_factory=dict)   # monotonic, per role
    next_try: dict[str, float] = field(default_factory=dict)  # monotonic, per role
    backoff: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)   # DISCONNECTED, no retry yet
    down_since: float | None = None               # wall clock: unheard or unlinked since
    last_error: str | None = None
    last_error_at: float | None = None            # wall clock
    relinks: int = 0
    logged: dict[str, float] = field(default_factory=dict)

    def row(self, now_wall: float) -> dict[str, Any]:
        """The `status` fields of this link."""
        return {"sub": "up" if self.up["sub"] else "down",
                "dealer": "up" if self.up["dealer"] else "down",
                "down_since": self.down_since,
                "down_for": None if self.down_since is None else now_wall - self.down_since,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "relinks": self.relinks}


class Links:
    """The links of one node to its pinned peers; decisions only (`step` acts)."""

    def __init__(self, peers: Iterable[Peer], after: float, backoff_max: float, *,
                 own_curve_fingerprint: str = "", max_frame: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        """`after`: seconds of silence before a relink (0: never relink); `backoff_max`: the
        longest wait between two relinks of one peer."""
        self.after, self.backoff_max = after, max(backoff_max, after)
        self.own_fp, self.max_frame = own_curve_fingerprint, max_frame
        self.clock, self.wall = clock, wall
        self.peers: dict[str, Peer] = {}
        self.links: dict[str, Link] = {}
        self.set_peers(peers)

    @classmethod
    def of(cls, config: NodeConfig, own_curve_fingerprint: str, max_frame: int) -> "Links":
        """The links of a node with `config` ([network] relink_after, relink_max)."""
        net = config.network
        return cls(config.peers, net.relink_after * net.heartbeat_interval, net.relink_max,
                   own_curve_fingerprint=own_curve_fingerprint, max_frame=max_frame)

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """A peers reload: keep the links of peers that stay (at the same addresses)."""
        new = {p.name: p for p in peers}
        now, wall = self.clock(), self.wall()
        self.links = {name: (self.links[name] if name in self.links
                             and self.peers.get(name) == peer else
                             Link(name, now, down_since=wall)) for name, peer in new.items()}
        self.peers = new

    # ---- what the monitors saw ----

    def on_event(self, ev: LinkEvent) -> None:
        """Record one monitor event against the peer it concerns."""
        name = ev.peer if ev.role == "dealer" else self._by_pub(ev.endpoint)
        link = self.links.get(name or "")
        if link is None:
            return
        now, wall = self.clock(), self.wall()
        if ev.event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            link.dropped.pop(ev.role, None)
            self._set_up(link, ev.role, True, now, wall)
            return
        if ev.event == zmq.EVENT_CONNECT_RETRIED:
            link.dropped.pop(ev.role, None)
            self._error(link, f"{link.name} is not reachable (connection refused or lost, or "
                        "closed during the handshake: then check the CURVE key pinned here "
                        "for it; libzmq retries)", wall)
            return
        was_up = link.up[ev.role]
        self._set_up(link, ev.role, False, now, wall)
        if ev.event == zmq.EVENT_DISCONNECTED and was_up:
            link.dropped[ev.role] = now
        elif ev.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._denied(link, ev.value, wall)
        elif ev.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._failed(link, ev.value, wall)
        elif ev.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._error(link, "handshake failed", wall)

    def settle(self) -> None:
        """After a tick's events: a connection that libzmq dropped and did not retry was cut
        by a protocol error (a frame over our limit, or bad framing)."""
        now, wall = self.clock(), self.wall()
        for link in self.links.values():
            for role, at in list(link.dropped.items()):
                if now - at < 0.05:
                    continue
                del link.dropped[role]
                what = ("subscription to" if role == "sub" else "catch-up connection to")
                self._error(link, f"our {what} {link.name} was closed after a protocol error "
                            f"(e.g. a frame over our limit of {self.max_frame} bytes); libzmq "
                            "does not retry it", wall)
                self._log(link, "dropped", "link.dropped", link.last_error or "",
                          logging.WARNING)

    # ---- deciding ----

    def due(self, states: Mapping[str, PeerState]) -> dict[str, tuple[str, ...]]:
        """Per peer, the connections to make again now (and the backoff that follows)."""
        if self.after <= 0:
            return {}
        now, out = self.clock(), {}
        for name, link in self.links.items():
            state = states.get(name)
            heard = None if state is None else max(
                (t for t in (state.last_heartbeat, state.last_word) if t is not None),
                default=None)
            silent = now - max(heard if heard is not None else link.made, link.made) > self.after
            if not silent:
                link.backoff.pop("sub", None)
                link.next_try.pop("sub", None)
                if heard is not None and link.down_since is not None and all(link.up.values()):
                    link.down_since = None
            elif link.down_since is None:
                link.down_since = self.wall()
            roles = []
            for role in ROLES:
                stuck = role == "dealer" and not link.up["dealer"] and \
                    now - link.changed.get("dealer", link.made) > self.after
                if (silent or stuck) and now >= link.next_try.get(role, 0.0):
                    wait = link.backoff.get(role, self.after)
                    link.next_try[role] = now + wait
                    link.backoff[role] = min(2 * wait, self.backoff_max)
                    roles.append(role)
            if roles:
                link.relinks += 1
                out[name] = tuple(roles)
        return out

    def step(self, transport: Relinker, states: Mapping[str, PeerState]) -> dict[str, Any]:
        """One tick: read the monitors, then relink what is due; what was relinked."""
        for ev in transport.link_events():
            self.on_event(ev)
        self.settle()
        done = self.due(states)
        for name, roles in done.items():
            peer = self.peers[name]
            transport.relink(name, peer.pub_address or "", peer.router_address or "",
                             peer.curve_key, roles)
            link = self.links[name]
            self._log(link, "relink", "link.relink", f"no word from {name} for "
                      f"{self.after:g} s or more: connecting again", logging.INFO,
                      roles=",".join(roles), attempt=link.relinks, last_error=link.last_error)
        return done

    def rows(self) -> dict[str, dict[str, Any]]:
        """Per peer, the link fields of `status`."""
        wall = self.wall()
        return {name: link.row(wall) for name, link in self.links.items()}

    # ---- internals ----

    def _by_pub(self, endpoint: str) -> str | None:
        for name, peer in self.peers.items():
            if peer.pub_address == endpoint:
                return name
        port = endpoint.rsplit(":", 1)[-1]
        hits = [n for n, p in self.peers.items() if (p.pub_address or "").endswith(":" + port)]
        return hits[0] if len(hits) == 1 else None

    def _set_up(self, link: Link, role: str, up: bool, now: float, wall: float) -> None:
        if link.up[role] == up:
            return
        link.up[role], link.changed[role] = up, now
        if up:
            link.backoff.pop(role, None)
            link.next_try.pop(role, None)
            if all(link.up.values()) and link.down_since is not None:
                event(log, "link.up", f"connected to {link.name} again", peer=link.name,
                      down_for=f"{wall - link.down_since:.1f}s", relinks=link.relinks)
                link.down_since = None
        elif link.down_since is None:
            link.down_since = wall

    def _error(self, link: Link, text: str, wall: float) -> None:
        link.last_error, link.last_error_at = text, wall

    def _denied(self, link: Link, status: int, wall: float) -> None:
        self._error(link, f"{link.name} refused our CURVE key (ZAP status {status}): it has "
                    "not pinned this node's CURVE key", wall)
        self._log(link, "denied", "link.denied", f"DENIED by {link.name}: its ZAP allow-list "
                  "does not hold our CURVE key", logging.WARNING, status=status,
                  our_curve_fingerprint=self.own_fp,
                  hint=f"compare fingerprints out of band: `twinnode card --show` here prints "
                       f"ours (CURVE {self.own_fp}); on {link.name}, `twinnode peers list` "
                       "prints what it pinned for us. It must pin our card (`twinnode peers "
                       "add CARD`, taken without a restart); we connect again on our own")

    def _failed(self, link: Link, code: int, wall: float) -> None:
        if code in _CRYPTO:
            text = (f"the CURVE handshake with {link.name} failed (code {code:#x}): the CURVE "
                    f"key pinned here for {link.name} is probably not its key; compare it "
                    f"with {link.name}'s `twinnode card --show`")
        else:
            text = f"handshake with {link.name} failed: protocol error {code:#x}"
        self._error(link, text, wall)
        self._log(link, "handshake", "link.handshake_failed", text, logging.WARNING)

    def _log(self, link: Link, key: str, name: str, text: str, level: int,
             **fields: Any) -> None:
        now = self.clock()
        if now - link.logged.get(key, -LOG_WINDOW) < LOG_WINDOW:
            return
        link.logged[key] = now
        event(log, name, text, level=level, peer=link.name, **fields)


async def keep(links: Links, transport: Relinker, states: Callable[[], Mapping[str, PeerState]],
               tick: float) -> None:
    """Tick `links` every `tick` seconds (at least 0.1) until cancelled; never dies."""
    while True:
        await asyncio.sleep(max(tick, 0.1))
        try:
            links.step(transport, states())
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError as exc:
            event(log, "link.error", f"relinking failed: {exc}", level=logging.WARNING)
        except Exception:  # a bug: logged with its traceback, the watch goes on
            log.exception("the links' watch failed")


async def open_transport(identity: Identity, config: NodeConfig, limits: WireLimits,
                         on_denied: DeniedFn) -> Transport:
    """Bind PUB and ROUTER behind the ZAP allow-list, connect to every pinned peer."""
    net = config.network
    transport = Transport(identity.curve_public, identity.curve_secret,
                          [p.curve_key for p in config.peers], hwm=net.hwm,
                          reply_hwm=net.catchup_batch + 2, max_message_bytes=frame_limit(limits),
                          request_bytes=limits.max_header_bytes + 4096, on_denied=on_denied)
    await transport.start(net.pub, net.router)
    try:
        for peer in config.peers:
            transport.connect(peer.name, peer.pub_address or "", peer.router_address or "",
                              peer.curve_key)
    except BaseException:
        transport.close()
        raise
    return transport
