"""The ROUTER's fair serving (node.serving): requests that arrive together wait their turn,
one slot per peer, refused messages never take a slot."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Sequence

from twinnode.node.serving import SLOTS, CatchupServer
from twinnode.wire import CatchupRequest


def test_requests_arriving_together_are_all_answered_in_turn_none_dropped():
    async def main() -> tuple[list[str], Counter[str], int]:
        counters: Counter[str] = Counter()
        server = CatchupServer(counters, Counter())
        gate = asyncio.Event()
        answered: list[str] = []
        most = 0

        async def serve(req: CatchupRequest, reply) -> None:
            nonlocal most
            most = max(most, len(server.fair.active))
            await gate.wait()
            answered.append(req.sender)

        async def reply(frames: Sequence[bytes]) -> bool:
            return True

        # Execute: 19 peers ask at once (a 20-node cluster's first heartbeat), bob twice more
        peers = [f"p{i:02d}" for i in range(19)]
        for name in peers:
            server.offer(CatchupRequest(name, "alice", {}), reply, serve)
        for _ in range(2):
            server.offer(CatchupRequest("p00", "alice", {}), reply, serve)
        await asyncio.sleep(0.05)
        gate.set()
        while server.tasks or server.fair.waiting:
            await asyncio.sleep(0.01)
        return answered, counters, most

    answered, counters, most = asyncio.run(asyncio.wait_for(main(), 10))
    # Assert: every peer answered (p00 twice: its first and its newest), in arrival order
    # after the first SLOTS; never more than SLOTS at once; one replaced request is `busy`
    assert sorted(answered) == sorted([f"p{i:02d}" for i in range(19)] + ["p00"])
    assert answered[SLOTS:SLOTS + 3] == ["p04", "p05", "p06"]
    assert most <= SLOTS
    assert counters["busy"] == 1 and counters["serve_waits"] == 19 - SLOTS + 2


def test_the_router_loop_refuses_garbage_before_a_slot_and_serves_what_passes():
    async def main() -> tuple[list[str], Counter[str]]:
        counters, rejected = Counter(), Counter()
        server = CatchupServer(counters, rejected)
        inbox: list[list[bytes]] = [[b"garbage"]] * 50 + [[b"ok"]] + [[b"boom"]]
        served: list[str] = []

        async def receive() -> tuple[list[bytes], object]:
            if not inbox:
                await asyncio.sleep(3600)
            return inbox.pop(0), reply

        async def reply(frames: Sequence[bytes]) -> bool:
            return True

        def open_request(frames: Sequence[bytes]) -> CatchupRequest | None:
            if frames == [b"boom"]:
                raise RuntimeError("a bug")
            return CatchupRequest("bob", "alice", {}) if frames == [b"ok"] else None

        async def serve(req: CatchupRequest, reply) -> None:
            served.append(req.sender)

        loop = asyncio.create_task(server.run(receive, open_request, serve))
        while inbox or server.tasks:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.15)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await server.stop()
        return served, rejected

    served, rejected = asyncio.run(asyncio.wait_for(main(), 10))
    assert served == ["bob"]
    assert rejected == {"internal": 1}  # the bug is counted; the loop went on
