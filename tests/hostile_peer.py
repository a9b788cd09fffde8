"""A hostile pinned peer (mallory) for tests/test_hostile_peers.py, in a process of its own so
it floods at full speed without sharing the test's interpreter.

    python tests/hostile_peer.py SPEC.json

SPEC: `mode`, `seconds`, `keys` (mallory's key directory), `victim` (its name),
`victim_router`, `victim_curve` (Z85), `pub` (the address mallory's PUB binds, which the
victim subscribes to), `prepared` (a msgpack file: {"router": [...], "pub": [...]}, lists of
messages, each a list of frames, sent round robin), `big` (bytes of an oversized frame).
Modes: garbage, oversized, signed, replay (prepared messages over and over), requests (fresh
signed catch-up requests asking for everything, replies read and dropped), noread (fresh
requests, replies never read). Prints how many messages it sent on each socket.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import msgpack
import zmq

from twinnode.trust.identity import Identity
from twinnode.wire import CatchupRequest, Holding, Signer, encode_catchup_request


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    me = Identity.load(Path(spec["keys"]), "mallory")
    signer = Signer(me)
    prepared = msgpack.unpackb(Path(spec["prepared"]).read_bytes()) if spec.get("prepared") \
        else {"router": [], "pub": []}
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.CURVE_PUBLICKEY, me.curve_public)
    dealer.setsockopt(zmq.CURVE_SECRETKEY, me.curve_secret)
    dealer.setsockopt(zmq.CURVE_SERVERKEY, spec["victim_curve"].encode())
    dealer.setsockopt(zmq.SNDHWM, 1000)
    if spec["mode"] == "noread":
        dealer.setsockopt(zmq.RCVHWM, 1)
        dealer.setsockopt(zmq.RCVBUF, 4096)
    dealer.connect(spec["victim_router"])
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.setsockopt(zmq.CURVE_SERVER, 1)
    pub.setsockopt(zmq.CURVE_SECRETKEY, me.curve_secret)
    pub.bind(spec["pub"])
    sent = {"router": 0, "pub": 0}
    deadline = time.monotonic() + spec["seconds"]
    i = 0
    while time.monotonic() < deadline:
        i += 1
        for frames in router_messages(spec, prepared["router"], signer, i):
            try:
                dealer.send_multipart(frames, flags=zmq.NOBLOCK)
                sent["router"] += 1
            except zmq.Again:
                time.sleep(0.001)
        for frames in pub_messages(spec, prepared["pub"], i):
            pub.send_multipart(frames)
            sent["pub"] += 1
        if spec["mode"] == "requests":
            drain(dealer)
        elif spec["mode"] == "noread":
            time.sleep(0.05)
    print(json.dumps(sent), flush=True)
    dealer.close(0)
    pub.close(0)
    ctx.term()
    return 0


def router_messages(spec: dict, prepared: list, signer: Signer, i: int) -> list[list[bytes]]:
    """What goes to the victim's ROUTER this round."""
    mode = spec["mode"]
    if mode == "garbage":
        return [[os.urandom(n) for n in (12, 200, 0, 64)], [os.urandom(300)]]
    if mode == "oversized":
        return [[b"req:mallory", os.urandom(spec["big"]), b"", b"\0" * 64]]
    if mode in ("requests", "noread"):
        have = {s: Holding(0) for s in spec["senders"]}
        return [encode_catchup_request(CatchupRequest("mallory", spec["victim"], have), signer)]
    return [prepared[i % len(prepared)]] if prepared else []


def pub_messages(spec: dict, prepared: list, i: int) -> list[list[bytes]]:
    """What mallory's PUB sends the victim (it subscribes to twin: and hb:) this round."""
    if spec["mode"] == "garbage":
        return [[b"twin:mallory", os.urandom(200), os.urandom(100), os.urandom(64)],
                [b"hb:mallory" + os.urandom(8)]]
    return [prepared[i % len(prepared)]] if prepared else []


def drain(sock: zmq.Socket) -> None:
    """Read and drop whatever replies have arrived."""
    while True:
        try:
            sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
