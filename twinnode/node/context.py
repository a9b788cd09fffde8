"""What jobs (`node.jobs`) and control commands (`node.commands`) may use of the node.

`NodeContext` is a Protocol: `node.core.Node` satisfies it (mypy checks where core hands
itself to the commands and jobs), and jobs and commands import this module, never the core.
So the node has one composer, and each job or command shows by its use of the context what
it reads and what it starts; a test may hand them any object with these members.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Protocol

from twinnode.generator.privacy import Ledger
from twinnode.node.agreed import PeerLimits
from twinnode.node.catchup import PeerState
from twinnode.node.config import NodeConfig
from twinnode.node.links import Links
from twinnode.node.recovery import Recovery
from twinnode.node.slot import Body, JobState
from twinnode.node.stored_twins import StoredTwins
from twinnode.schema import Schema
from twinnode.store.layout import StateLayout
from twinnode.store.store import Store
from twinnode.trust.identity import TrustStore
from twinnode.twins import Release
from twinnode.wire import WireLimits

Progress = Callable[[int, int], None]


class NodeContext(Protocol):
    """The node as jobs and control commands see it."""

    @property
    def name(self) -> str:
        """This node's (and party's) name."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def schema(self) -> Schema: ...

    @property
    def layout(self) -> StateLayout:
        """The paths under the state directory."""

    @property
    def trust(self) -> TrustStore: ...

    @property
    def limits(self) -> WireLimits: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def rejected(self) -> Counter[str]:
        """Refused messages, by reason."""

    @property
    def counters(self) -> Counter[str]:
        """What the node did: accepted, published, served, ... (docs/NODE.md)."""

    @property
    def peers(self) -> Mapping[str, PeerState]:
        """What the node knows of each pinned peer (catch-up state)."""

    @property
    def links(self) -> Links:
        """Each peer's connections: up or down since when, the last error, relinks."""

    @property
    def agreed(self) -> PeerLimits:
        """What each peer accepts, what we withheld from it, what of its we refused."""

    @property
    def recovery(self) -> Recovery:
        """Whether publishing must wait for peers' holdings of our seqs (a lost state)."""

    @property
    def stored_twins(self) -> StoredTwins:
        """The analyses' reader of peers' stored twins (each decoded once)."""

    def require_store(self) -> Store:
        """The open store; ControlError when the node's store is not open."""

    def uptime(self) -> float:
        """Seconds since the node started."""

    def own_latest(self) -> int:
        """The highest own seq held."""

    def endpoints(self) -> dict[str, str]:
        """The bound socket addresses (`pub`, `router`); empty when not started."""

    def current_job(self) -> JobState | None:
        """The running or last job."""

    async def publish_release(self, release: Release,
                              progress: Progress | None = None) -> list[int]:
        """Sign, store and send the twins of `release` not sent before; their new seqs."""

    def start_job(self, name: str, body: Body) -> JobState:
        """Run `body` as the node's one background job; ControlError if one is running."""

    async def wait_job(self) -> JobState:
        """Wait for the current job to end."""

    async def reload_peers(self) -> dict[str, Any]:
        """Pin what node.toml and the peers file pin now (no restart); what changed."""

    def request_stop(self, why: str = "request") -> None:
        """Ask the node to stop (after the reply is sent)."""
