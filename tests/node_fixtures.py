"""`node_factory`: in-process nodes that are stopped at the end of the test, pass or fail.

A test makes its nodes with the factory and runs its coroutine with `factory.run(main())`:
every node made is stopped inside the same event loop when `main` returns, raises or times
out, so a failing assertion cannot leave a store locked, a control socket bound or ZeroMQ
sockets open for the tests after it. Import the fixture into a test module to use it:
`from node_fixtures import node_factory  # noqa: F401`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Iterator

import pytest

from twinnode.node.config import NodeConfig
from twinnode.node.core import Node

TIMEOUT = 60.0  # the longest a test's coroutine may run


class NodeFactory:
    """Makes nodes for one test and stops every one of them."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def __call__(self, config: NodeConfig) -> Node:
        node = Node(config)
        self.nodes.append(node)
        return node

    async def opened(self, config: NodeConfig) -> Node:
        """A node with its store open (no sockets), as `handle_frames` tests want it."""
        node = self(config)
        await node.open()
        return node

    async def stop_all(self) -> None:
        for node in self.nodes:
            await node.stop()

    def run(self, coro: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
        """Run the test's coroutine, then stop every node made, in the same loop."""
        async def main() -> Any:
            try:
                return await asyncio.wait_for(coro, timeout)
            finally:
                await self.stop_all()
        return asyncio.run(main())

    def leftovers(self) -> list[Node]:
        """Nodes still holding a store, sockets or a control socket."""
        return [n for n in self.nodes if n.store is not None or n.transport is not None
                or n.control is not None]


@pytest.fixture
def node_factory() -> Iterator[NodeFactory]:
    factory = NodeFactory()
    yield factory
    left = factory.leftovers()
    for node in left:  # made but never run through factory.run: close what holds resources
        if node.transport is not None:
            node.transport.close()
        if node.store is not None:
            node.store.close()
        node.transport = node.store = None
        if node.control is not None:
            node.control.path.unlink(missing_ok=True)
            node.control = None
    assert not left, f"nodes {[n.name for n in left]} were not stopped by factory.run"
