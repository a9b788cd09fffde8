"""Peer cards, the peers command and the trust model's claims (certs/README.md), each tested.

Claims about a stolen card: it lets no one sign as the site, connect as it, alter its
addresses, or replace its pinned keys; a forged card of the same name shows other
fingerprints. Claims about a site's old key after a rotation: twins and connections under it
are refused, it cannot rotate again at a peer that took the new card, an old card is refused,
and the twins it signed before stay readable from the store.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_small_frame

from twinnode.data import frame_to_arrays
from twinnode.errors import CardError, ConfigError, InvalidSignature, UnknownSender
from twinnode.node.config import load_config
from twinnode.node.membership import peer_changes
from twinnode.node.stored_twins import StoredTwins
from twinnode.node.transport import AllowList
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.trust.cards import Card, admit, card_body, make_card, parse_card, render_card
from twinnode.trust.identity import Identity, TrustStore
from twinnode.twins import Provenance, Twin
from twinnode.wire import ReplayGuard, Signer, Verifier, encode_twin

PUB, ROUTER = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"


def twin_frames(schema: Schema, signer: Identity, seq: int, name: str = "bob") -> list[bytes]:
    prov = Provenance(sender=name, schema_hash=schema.hash, epsilon=1.0, delta=1e-3, n=30, k=1,
                      index=0, relation="add-remove", release=f"r{seq}", created=float(seq))
    arrays = frame_to_arrays(schema, make_small_frame(schema, 30, seed=seq))
    return encode_twin(Twin(prov, arrays), schema, seq, Signer(signer))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinnode.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60)


# ---- the card itself -----------------------------------------------------------------------

def test_a_card_round_trips_and_carries_its_keys_addresses_and_fingerprints():
    bob = Identity.generate("bob")
    card = make_card(bob, PUB, ROUTER)
    back = parse_card(render_card(card))
    assert back == card
    assert back.peer() == bob.peer(PUB, ROUTER)
    text = render_card(card)
    assert card.sign_fingerprint in text and card.curve_fingerprint in text


@pytest.mark.parametrize("field,value", [("pub_address", '"tcp://10.6.6.6:7001"'),
                                         ("serial", "7"), ("name", '"mallory"')])
def test_a_stolen_card_cannot_be_altered(field, value):
    text = render_card(make_card(Identity.generate("bob"), PUB, ROUTER))
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{field} = "))
    with pytest.raises(CardError, match="signature does not verify"):
        parse_card(text.replace(line, f"{field} = {value}"))


def test_a_card_whose_fingerprint_field_lies_is_refused():
    text = render_card(make_card(Identity.generate("bob"), PUB, ROUTER))
    line = next(ln for ln in text.splitlines() if ln.startswith("sign_fingerprint"))
    with pytest.raises(CardError, match="does not match"):
        parse_card(text.replace(line, 'sign_fingerprint = "0000 0000 0000 0000 0000 0000 '
                                      '0000 0000"'))


def test_a_forged_card_under_a_pinned_name_is_refused_and_shows_other_fingerprints():
    bob, mallory = Identity.generate("bob"), Identity.generate("bob")
    pinned = make_card(bob, PUB, ROUTER).peer()
    forged = parse_card(render_card(make_card(mallory, PUB, ROUTER)))  # self-signed: valid
    assert forged.sign_fingerprint != pinned.sign_fingerprint
    with pytest.raises(CardError, match="not signed by that key"):
        admit(forged, pinned)


def test_a_stolen_card_signs_nothing_a_verifier_accepts(small_schema):
    bob, thief = Identity.generate("bob"), Identity.generate("bob")
    trust = TrustStore([make_card(bob, PUB, ROUTER).peer()])
    verifier = Verifier(trust, small_schema, ReplayGuard())
    with pytest.raises(InvalidSignature):
        verifier.open(twin_frames(small_schema, thief, 1))
    assert verifier.open(twin_frames(small_schema, bob, 1)).sender == "bob"


def test_a_stolen_card_does_not_get_a_connection_through_zap():
    bob, thief = Identity.generate("bob"), Identity.generate("bob")
    allow = AllowList([bob.curve_public])
    assert allow.callback("twinnode", bob.curve_public)
    assert not allow.callback("twinnode", thief.curve_public)  # the card holds no secret


# ---- rotation ------------------------------------------------------------------------------

def rotate(old: Identity) -> tuple[Identity, Card]:
    new = Identity.generate(old.name)
    card = parse_card(render_card(make_card(new, PUB, ROUTER, serial=2,
                                            previous=old.sign_secret)))
    return new, card


def test_a_rotation_signed_by_the_pinned_key_is_admitted_and_retires_it():
    old = Identity.generate("bob")
    pinned = make_card(old, PUB, ROUTER).peer()
    new, card = rotate(old)
    kind, entry = admit(card, pinned)
    assert kind == "rotation"
    assert entry.sign_key == new.sign_public and entry.retired_sign_keys == (old.sign_public,)


def test_a_rotation_card_whose_old_signature_is_wrong_is_refused():
    old, other = Identity.generate("bob"), Identity.generate("x")
    card = make_card(Identity.generate("bob"), PUB, ROUTER, previous=old.sign_secret)
    bad = dataclasses.replace(card, previous_signature=other.sign(card_body(card)))
    with pytest.raises(CardError, match="previous key's signature"):
        parse_card(render_card(bad))


def test_after_a_rotation_the_old_key_cannot_rotate_again_nor_come_back():
    old = Identity.generate("bob")
    new, card = rotate(old)
    _, entry = admit(card, make_card(old, PUB, ROUTER).peer())
    attacker = Identity.generate("bob")  # holds the old secret key, makes its own new keys
    hijack = parse_card(render_card(make_card(attacker, PUB, ROUTER, serial=3,
                                              previous=old.sign_secret)))
    with pytest.raises(CardError, match="not signed by that key"):
        admit(hijack, entry)
    with pytest.raises(CardError, match="retired"):
        admit(parse_card(render_card(make_card(old, PUB, ROUTER))), entry)


def test_after_a_rotation_old_key_twins_are_refused_but_stored_ones_stay_readable(
        tmp_path, small_schema):
    old = Identity.generate("bob")
    trust = TrustStore([make_card(old, PUB, ROUTER).peer()])
    store = Store.open(tmp_path / "state")
    try:
        env = Verifier(trust, small_schema, ReplayGuard()).open(twin_frames(small_schema, old, 1))
        assert store.put("bob", 1, env.digest, env.frames, k=0, release="r1")
        new, card = rotate(old)
        _, entry = admit(card, trust.get("bob"))
        trust.reset([entry])
        live = Verifier(trust, small_schema, ReplayGuard())
        with pytest.raises(InvalidSignature):
            live.open(twin_frames(small_schema, old, 2))  # a twin under the old key
        assert live.open(twin_frames(small_schema, new, 2)).sender == "bob"
        reader = StoredTwins(trust, small_schema)
        assert [len(t) for t in reader.latest(store, "me").values()] == [1]
        trust.reset([])  # bob removed: its stored twin stays in the store, out of analyses
        assert reader.latest(store, "me") == {} and store.counts() == {"bob": 1}
        with pytest.raises(UnknownSender):
            live.open(twin_frames(small_schema, new, 3))
    finally:
        store.close()


def test_after_a_rotation_the_old_curve_key_is_denied():
    old = Identity.generate("bob")
    new, _ = rotate(old)
    allow = AllowList([old.curve_public])
    allow.keys = frozenset([new.curve_public])  # what Transport.allow_only does on reload
    assert not allow.callback("twinnode", old.curve_public)
    assert allow.callback("twinnode", new.curve_public)


def test_peer_changes_name_additions_removals_and_rotations():
    a, b, c = (Identity.generate(n) for n in "abc")
    b2 = Identity.generate("b")
    old = [a.peer(PUB, ROUTER), b.peer("tcp://127.0.0.1:8001", "tcp://127.0.0.1:8002")]
    new = [b2.peer("tcp://127.0.0.1:8001", "tcp://127.0.0.1:8002"),
           c.peer("tcp://127.0.0.1:9001", "tcp://127.0.0.1:9002")]
    change = peer_changes(old, new)
    assert change.summary() == {"added": ["c"], "removed": ["a"], "rotated": ["b"],
                                "moved": []}
    assert not peer_changes(new, new)


# ---- the commands --------------------------------------------------------------------------

def test_init_card_and_peers_pin_a_site_without_writing_toml(tmp_path):
    for name, port in (("alice", 7100), ("bob", 7200)):
        res = cli("init", name, "--dir", name, "--host", "127.0.0.1", "--port", str(port),
                  cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    alice = tmp_path / "alice"
    again = cli("init", "alice", "--dir", "alice", cwd=tmp_path)
    assert again.returncode == 3 and "refusing to overwrite" in again.stderr
    shown = cli("card", "--show", cwd=tmp_path / "bob").stdout
    added = cli("peers", "add", "../bob/bob.card.toml", cwd=alice)
    assert added.returncode == 0 and "pinned bob" in added.stdout
    fp = shown.split("signing key fingerprint")[1].splitlines()[0].strip()
    assert fp in added.stdout
    listed = cli("peers", "list", cwd=alice).stdout
    assert "bob" in listed and fp in listed
    own = cli("peers", "add", "alice.card.toml", cwd=alice)
    assert own.returncode == 9 and "own card" in own.stderr
    wrong = cli("peers", "add", "../bob/bob.card.toml", "--fingerprint", "0000", cwd=alice)
    assert wrong.returncode == 9 and "do not pin it" in wrong.stderr
    removed = cli("peers", "remove", "bob", cwd=alice)
    assert removed.returncode == 0 and "bob" not in cli("peers", "list", cwd=alice).stdout


def test_the_node_config_reads_the_peers_file_beside_its_own_entries(tmp_path, small_schema):
    from twinnode.node import peersfile

    bob, carol = Identity.generate("bob"), Identity.generate("carol")
    (tmp_path / "schema.toml").write_text("x")
    (tmp_path / "d.csv").write_text("x")
    base = ('[node]\nname = "alice"\n[data]\npath = "d.csv"\nschema = "schema.toml"\n'
            '[network]\npub = "tcp://127.0.0.1:7001"\nrouter = "tcp://127.0.0.1:7002"\n')
    (tmp_path / "node.toml").write_text(base)
    peersfile.write(tmp_path / "peers.toml", "alice",
                    [bob.peer("tcp://127.0.0.1:8001", "tcp://127.0.0.1:8002")])
    assert [p.name for p in load_config(tmp_path / "node.toml").peers] == ["bob"]
    entry = "\n".join(f'{k} = "{v}"' for k, v in
                      bob.peer("tcp://127.0.0.1:8001", "tcp://127.0.0.1:8002").to_entry().items())
    (tmp_path / "node.toml").write_text(base + "[[peers]]\n" + entry + "\n")
    with pytest.raises(ConfigError, match="pinned twice"):
        load_config(tmp_path / "node.toml")
    peersfile.write(tmp_path / "peers.toml", "alice",
                    [carol.peer("tcp://127.0.0.1:9001", "tcp://127.0.0.1:9002")])
    assert [p.name for p in load_config(tmp_path / "node.toml").peers] == ["bob", "carol"]
