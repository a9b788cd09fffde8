"""Transport: CURVE everywhere, a ZAP allow-list of pinned keys, bounded frames, clean close."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest
import zmq

from twinnode.errors import TransportError
from twinnode.node.transport import Transport

WAIT = 10.0  # every wait in these tests is bounded by this
ANY = "tcp://127.0.0.1:*"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 3 * WAIT))


async def started(keys: tuple[bytes, bytes], allowed: list[bytes], **kw: Any) -> Transport:
    t = Transport(*keys, allowed, **kw)
    await t.start(ANY, ANY)
    return t


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def drain(t: Transport, into: list, recv: Callable[[], Awaitable[list[bytes]]]) -> None:
    while True:
        into.append(await recv())


def test_pinned_subscriber_receives_and_an_unpinned_one_is_denied_and_gets_nothing():
    async def main() -> None:
        # Prepare: a server allowing only `friend`; a stranger with a fresh key
        server_keys, friend_keys, stranger_keys = (zmq.curve_keypair() for _ in range(3))
        denied: list[bytes] = []
        server = await started(server_keys, [friend_keys[0]], on_denied=denied.append)
        friend = await started(friend_keys, [])
        stranger = await started(stranger_keys, [])
        for client in (friend, stranger):
            client.connect("server", server.endpoints["pub"], server.endpoints["router"],
                           server_keys[0])
        got_friend: list = []
        got_stranger: list = []
        tasks = [asyncio.create_task(drain(friend, got_friend, friend.recv_sub)),
                 asyncio.create_task(drain(stranger, got_stranger, stranger.recv_sub))]
        try:
            # Execute: publish until the friend has heard three messages and ZAP said no
            n = 0
            while len(got_friend) < 3 or not denied:
                await server.publish([b"hb:server", b"%d" % n])
                n += 1
                await asyncio.sleep(0.02)
                assert n < WAIT / 0.02, "friend never received"
            for _ in range(10):  # more chances for the stranger
                await server.publish([b"twin:server", b"late"])
                await asyncio.sleep(0.02)
            # Assert
            assert got_stranger == []
            assert stranger_keys[0] in denied and friend_keys[0] not in denied
            assert server.allow.denied == len(denied)
            assert all(m[0] == b"hb:server" for m in got_friend[:3])
        finally:
            for task in tasks:
                task.cancel()
            for t in (server, friend, stranger):
                t.close()

    run(main())


def test_catchup_round_trip_over_router_and_dealer_only_for_pinned_keys():
    async def main() -> None:
        server_keys, friend_keys, stranger_keys = (zmq.curve_keypair() for _ in range(3))
        server = await started(server_keys, [friend_keys[0]])
        friend = await started(friend_keys, [])
        stranger = await started(stranger_keys, [])
        for client in (friend, stranger):
            client.connect("server", server.endpoints["pub"], server.endpoints["router"],
                           server_keys[0])
        try:
            # Execute: the friend's request gets through once the handshake is done
            sent = False
            while not sent:
                sent = await friend.request("server", [b"req:friend", b"have"])
                await asyncio.sleep(0.02)
            routing_id, frames = await asyncio.wait_for(server.recv_request(), WAIT)
            assert frames == [b"req:friend", b"have"]
            assert await server.reply(routing_id, [b"twin:x", b"payload"])
            assert await asyncio.wait_for(friend.recv_reply("server"), WAIT) == \
                [b"twin:x", b"payload"]
            # the stranger never completes a handshake, so its DEALER has nowhere to send
            await until(lambda: server.allow.denied >= 1, "the stranger's denial")
            assert await stranger.request("server", [b"req:stranger", b"x"]) is False
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(server.recv_request(), 0.5)
        finally:
            for t in (server, friend, stranger):
                t.close()

    run(main())


def test_request_to_a_peer_that_is_down_fails_at_once_instead_of_queueing():
    async def main() -> None:
        keys, gone = zmq.curve_keypair(), zmq.curve_keypair()
        client = await started(keys, [])
        try:
            client.connect("gone", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", gone[0])
            assert await asyncio.wait_for(client.request("gone", [b"x"]), 1.0) is False
            with pytest.raises(TransportError, match="no connection to peer 'nobody'"):
                await client.request("nobody", [b"x"])
        finally:
            client.close()

    run(main())


def test_a_frame_above_the_size_limit_disconnects_the_sender_and_smaller_ones_flow():
    async def main() -> None:
        server_keys, client_keys = zmq.curve_keypair(), zmq.curve_keypair()
        server = await started(server_keys, [client_keys[0]], max_message_bytes=1000)
        client = await started(client_keys, [])
        client.connect("server", server.endpoints["pub"], server.endpoints["router"],
                       server_keys[0])
        try:
            while not await client.request("server", [b"small"]):
                await asyncio.sleep(0.02)
            assert (await asyncio.wait_for(server.recv_request(), WAIT))[1] == [b"small"]
            # Execute: one frame too big, then small ones until one arrives after reconnecting
            assert await client.request("server", [b"x" * 5000])
            got = None
            for i in range(200):
                await client.request("server", [b"after %d" % i])
                try:
                    got = (await asyncio.wait_for(server.recv_request(), 0.05))[1]
                    break
                except asyncio.TimeoutError:
                    pass
            # Assert: the big frame never arrived; traffic resumed
            assert got is not None and got[0].startswith(b"after")
        finally:
            server.close()
            client.close()

    run(main())


def test_close_is_safe_twice_and_a_busy_port_is_a_transport_error():
    async def main() -> None:
        first = await started(zmq.curve_keypair(), [])
        second = Transport(*zmq.curve_keypair(), [])
        with pytest.raises(TransportError, match="cannot bind the pub socket"):
            await second.start(first.endpoints["pub"], ANY)
        second.close()
        first.close()
        first.close()
        with pytest.raises(TransportError, match="transport is closed"):
            await first.publish([b"x"])

    run(main())


def test_replies_to_a_requester_that_stops_reading_are_bounded_then_abandoned(monkeypatch):
    # Prepare: a reply may wait 0.3 s for room; the requester reads nothing
    monkeypatch.setattr("twinnode.node.transport.SEND_TIMEOUT", 0.3)

    async def main() -> int:
        server_keys, friend_keys = zmq.curve_keypair(), zmq.curve_keypair()
        server = await started(server_keys, [friend_keys[0]], reply_hwm=4)
        friend = await started(friend_keys, [], recv_hwm=4)
        friend.connect("server", server.endpoints["pub"], server.endpoints["router"],
                       server_keys[0])
        try:
            while not await friend.request("server", [b"req:friend", b"have"]):
                await asyncio.sleep(0.02)
            routing_id, _ = await asyncio.wait_for(server.recv_request(), WAIT)
            # Execute: 1 MB replies until one finds no room
            sent, payload = 0, b"x" * 1_000_000
            while await server.reply(routing_id, [b"twin:x", payload]):
                sent += 1
                assert sent < 200, "replies were queued without bound"
            return sent
        finally:
            server.close()
            friend.close()

    sent = run(main())
    # Assert: a handful (both high-water marks plus what the kernel's TCP buffers hold)
    assert 4 <= sent < 40



def test_relinking_under_streams_of_multipart_messages_never_aborts_and_receiving_goes_on():
    """A relink closes the old socket and makes a new one: `disconnect()` on a SUB holding
    part of a message from one of several publishers aborts the process in libzmq
    (`!_more`, zeromq/libzmq#3485); 20- and 50-node start-ups lost nodes that way. The
    receives pending on the old sockets carry on on the new ones."""
    async def main() -> None:
        # Prepare: three servers streaming 3-frame messages to one client's SUB
        client_keys = zmq.curve_keypair()
        keys = [zmq.curve_keypair() for _ in range(3)]
        servers = [await started(k, [client_keys[0]]) for k in keys]
        client = await started(client_keys, [])
        links = [(f"s{i}", s.endpoints["pub"], s.endpoints["router"], k[0])
                 for i, (s, k) in enumerate(zip(servers, keys))]
        for link in links:
            client.connect(*link)
        live: list = []
        replies: list = []
        tasks = [asyncio.create_task(drain(client, live, client.recv_sub)),
                 asyncio.create_task(drain(client, replies, lambda: client.recv_reply("s0")))]

        async def stream(server: Transport) -> None:
            while True:
                await server.publish([b"twin:s", b"x" * 2000, b"y" * 50_000])
                await asyncio.sleep(0)

        tasks += [asyncio.create_task(stream(s)) for s in servers]
        try:
            await until(lambda: len(live) > 20, "the first messages")
            # Execute: relink s0 on both roles 100 times while all three streams flow
            for _ in range(100):
                client.relink(*links[0])
                await asyncio.sleep(0.005)
            # Assert: the receive loops are alive and hear the servers on the new sockets
            heard = len(live)
            await until(lambda: len(live) > heard + 20, "messages after the relinks")
            assert all(len(m) == 3 and len(m[2]) == 50_000 for m in live)
            sent = False
            while not sent:
                sent = await client.request("s0", [b"req:client", b"have"])
                await asyncio.sleep(0.02)
            routing_id, _ = await asyncio.wait_for(servers[0].recv_request(), WAIT)
            assert await servers[0].reply(routing_id, [b"end:s0", b"done"])
            await until(lambda: replies == [[b"end:s0", b"done"]], "the reply")
            assert not any(t.done() for t in tasks)
        finally:
            for task in tasks:
                task.cancel()
            for t in (*servers, client):
                t.close()

    run(main())
