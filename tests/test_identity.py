"""Key files, fingerprints, the keygen command and the trust store."""
from __future__ import annotations

import os
import random
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from twinnode.cli.main import main
from twinnode.errors import ConfigError, KeyFileError, UnknownSender
from twinnode.trust.certs import (
    curve_keypair,
    curve_public,
    curve_raw,
    format_curve_key,
    parse_curve_key,
    z85_decode,
    z85_encode,
)
from twinnode.trust.identity import (
    Identity,
    KeyPaths,
    Peer,
    TrustStore,
    fingerprint,
    format_sign_key,
    load_peer,
    parse_sign_key,
    save_identity,
    sign,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
FINGERPRINT_RE = re.compile(r"^([0-9a-f]{4} ){7}[0-9a-f]{4}$")


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    """A directory holding alice's four key files, written by `twinnode keygen`."""
    assert main(["keygen", "alice", "--dir", str(tmp_path / "certs")]) == 0
    return tmp_path / "certs"


def entry(identity: Identity, **extra: str) -> dict[str, str]:
    return {"name": identity.name, "sign_key": format_sign_key(identity.sign_public),
            "curve_key": format_curve_key(identity.curve_public), **extra}


# ------------------------------------------------------------------ keygen
def test_keygen_writes_four_files_with_secrets_0600_and_a_banner(keydir):
    paths = KeyPaths.of(keydir, "alice")
    for path in paths.all():
        assert path.is_file()
    for secret in (paths.sign_secret, paths.curve_secret):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        first = secret.read_text().splitlines()[:3]
        assert any("secret" in line.lower() for line in first) and first[0].startswith("#")
    for public in (paths.sign_public, paths.curve_public):
        assert "secret-key" not in public.read_text()


def test_keygen_secrets_are_0600_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        assert main(["keygen", "bob", "--dir", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    paths = KeyPaths.of(tmp_path, "bob")
    assert stat.S_IMODE(paths.sign_secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.curve_secret.stat().st_mode) == 0o600


def test_keygen_prints_the_fingerprints_of_the_written_keys(tmp_path, capsys):
    # Execute
    assert main(["keygen", "alice", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # Assert
    me = Identity.load(tmp_path, "alice")
    sign_fp = fingerprint(me.sign_public)
    curve_fp = fingerprint(curve_raw(me.curve_public))
    assert FINGERPRINT_RE.match(sign_fp) and FINGERPRINT_RE.match(curve_fp)
    assert f"signing key fingerprint  {sign_fp}" in out
    assert f"CURVE key fingerprint    {curve_fp}" in out
    assert format_sign_key(me.sign_public) in out and me.curve_public.decode() in out


def test_keygen_refuses_to_overwrite_existing_keys(keydir, capsys):
    # Prepare
    before = {p: p.read_bytes() for p in keydir.iterdir()}
    # Execute
    code = main(["keygen", "alice", "--dir", str(keydir)])
    # Assert
    assert code == KeyFileError.exit_code
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in keydir.iterdir()} == before


def test_keygen_refuses_when_only_one_file_exists_and_writes_nothing(tmp_path):
    (tmp_path / "alice.key").write_text("someone else's certificate\n")
    assert main(["keygen", "alice", "--dir", str(tmp_path)]) == KeyFileError.exit_code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.key"]


def test_keygen_rejects_a_name_that_cannot_be_a_topic(tmp_path):
    assert main(["keygen", "al:ice", "--dir", str(tmp_path)]) == ConfigError.exit_code
    assert list(tmp_path.iterdir()) == []


def test_curve_files_are_readable_by_zmq_auth(keydir):
    me = Identity.load(keydir, "alice")
    public, secret = zmq.auth.load_certificate(keydir / "alice.key_secret")
    assert (public, secret) == (me.curve_public, me.curve_secret)
    assert zmq.auth.load_certificate(keydir / "alice.key") == (me.curve_public, None)
    assert zmq.curve_public(secret) == public


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs the git checkout")
@pytest.mark.parametrize("path, ignored", [
    ("certs/alice.sign_secret", True), ("certs/alice.key_secret", True),
    ("elsewhere/deep/alice.sign_secret", True), ("state/keys/bob.key_secret", True),
    ("certs/README.md", False)])
def test_secret_key_files_are_ignored_by_git(path, ignored):
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
    assert (result.returncode == 0) is ignored


# ------------------------------------------------------------------ loading key files
def test_identity_loads_what_keygen_wrote(keydir):
    me = Identity.load(keydir, "alice")
    peer = load_peer(keydir, "alice", "tcp://127.0.0.1:5550")
    assert peer == me.peer("tcp://127.0.0.1:5550")
    assert verify(peer.verifier, me.sign(b"hello"), b"hello")


def test_missing_key_file_names_the_file_and_the_fix(keydir):
    (keydir / "alice.sign_secret").unlink()
    with pytest.raises(KeyFileError, match=r"alice\.sign_secret: key file not found.*keygen"):
        Identity.load(keydir, "alice")


@pytest.mark.parametrize("filename", ["alice.sign_secret", "alice.key_secret"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_secret_key_open_to_others_is_refused_with_the_chmod_fix(keydir, filename, mode):
    path = keydir / filename
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        Identity.load(keydir, "alice")
    assert f"mode {mode:04o}" in str(info.value) and f"chmod 600 {path}" in str(info.value)


def test_owner_only_modes_stricter_than_0600_are_accepted(keydir):
    (keydir / "alice.sign_secret").chmod(0o400)
    (keydir / "alice.key_secret").chmod(0o700)
    assert Identity.load(keydir, "alice").name == "alice"


def _corrupt(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    mode = path.stat().st_mode
    path.write_text(text.replace(old, new, 1))
    path.chmod(stat.S_IMODE(mode))


@pytest.mark.parametrize("filename, old, new, match", [
    ("alice.sign_secret", "secret-key = \"", "secret-key = \"!!", "base64"),
    ("alice.sign_secret", "secret-key = \"", "secret-key = \"AAAA", "bytes"),
    ("alice.sign_secret", "format = ", "fromat = ", "malformed"),
    ("alice.sign_secret", "name = \"alice\"", "name = \"bob\"", "for 'bob'"),
    ("alice.sign_secret", "public-key = \"ed25519:", "public-key = \"ed25519:A", "malformed"),
    ("alice.key_secret", "secret-key = \"", "secret-key = \"x", "Z85"),
    ("alice.key_secret", "    public-key", "    # public-key", "no public-key"),
    ("alice.key_secret", "curve\n", "curve\ngarbage\n", "line"),
])
def test_malformed_key_file_is_refused_with_a_clear_error(keydir, filename, old, new, match):
    _corrupt(keydir / filename, old, new)
    with pytest.raises(KeyFileError, match=match) as info:
        Identity.load(keydir, "alice")
    assert filename in str(info.value)


def test_key_file_whose_public_key_does_not_match_the_secret_is_refused(keydir, tmp_path):
    other = Identity.generate("alice")
    _corrupt(keydir / "alice.sign_secret", "public-key = \"",
             "public-key = \"" + format_sign_key(other.sign_public) + "\"\n#")
    with pytest.raises(KeyFileError, match="does not belong"):
        Identity.load(keydir, "alice")


def test_identity_repr_never_shows_a_secret(keydir):
    me = Identity.load(keydir, "alice")
    assert me.curve_secret.decode() not in repr(me) and "sign_secret" not in repr(me)


# ------------------------------------------------------------------ text forms, sign/verify
def test_public_key_strings_round_trip():
    me = Identity.generate("alice")
    assert parse_sign_key(format_sign_key(me.sign_public)) == me.sign_public
    assert parse_curve_key(format_curve_key(me.curve_public)) == me.curve_public


@pytest.mark.parametrize("text", ["", "ed25519:", "ed25519:AAAA", "ssh-ed25519:" + "A" * 43 + "=",
                                  "ed25519:" + "!" * 44, None, 42])
def test_malformed_signing_key_strings_are_refused(text):
    with pytest.raises(KeyFileError):
        parse_sign_key(text)


@pytest.mark.parametrize("text", ["", "x" * 39, "x" * 41, '"' * 40, "#" * 40, None])
def test_malformed_curve_key_strings_are_refused(text):
    with pytest.raises(KeyFileError):
        parse_curve_key(text)


# ------------------------------------------------------------------ CURVE without libzmq
def test_the_local_z85_codec_agrees_with_pyzmqs():
    rng = random.Random(85)
    for size in (0, 4, 32, 64, 400):
        for _ in range(50):
            raw = rng.randbytes(size)
            assert z85_encode(raw) == z85.encode(raw)
            assert z85_decode(z85.encode(raw)) == raw
    assert z85_encode(b"\x86\x4f\xd2\x6f\xb5\x59\xf7\x5b") == b"HelloWorld"  # ZeroMQ RFC 32


@pytest.mark.parametrize("text", [b"Hell", b"HelloWorl", b"Hello~orld", b"%%%%%", b"#####"])
def test_the_local_z85_codec_refuses_what_is_not_z85(text):
    with pytest.raises(ValueError):
        z85_decode(text)


def test_curve_keys_are_derived_as_libzmq_derives_them():
    rng = random.Random(25519)
    for _ in range(200):
        secret = z85.encode(rng.randbytes(32))  # unclamped secrets too: both clamp
        assert curve_public(secret) == zmq.curve_public(secret)
    for _ in range(50):
        public, secret = zmq.curve_keypair()
        assert curve_public(secret) == public
    public, secret = curve_keypair()
    assert zmq.curve_public(secret) == public and public != curve_keypair()[0]


def test_a_curve_handshake_succeeds_with_keys_made_here():
    server_public, server_secret = curve_keypair()
    client_public, client_secret = curve_keypair()
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        server.setsockopt(zmq.CURVE_SERVER, 1)
        server.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
        server.bind("tcp://127.0.0.1:*")
        client.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        client.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
        client.setsockopt(zmq.CURVE_SECRETKEY, client_secret)
        client.connect(server.getsockopt(zmq.LAST_ENDPOINT).decode())
        client.send(b"ping")
        assert server.poll(5000) and server.recv() == b"ping"
    finally:
        for sock in (server, client):
            sock.close(linger=0)
        ctx.term()


def test_fingerprint_is_stable_and_short():
    assert fingerprint(bytes(32)) == "6668 7aad f862 bd77 6c8f c18b 8e9f 8e20"


def test_verify_refuses_tampered_message_wrong_key_and_short_signature():
    me, other = Identity.generate("alice"), Identity.generate("bob")
    sig = sign(me.sign_secret, b"message")
    assert verify(me.peer().verifier, sig, b"message")
    assert not verify(me.peer().verifier, sig, b"messagf")
    assert not verify(other.peer().verifier, sig, b"message")
    assert not verify(me.peer().verifier, sig[:63], b"message")


def test_save_identity_refuses_a_symlink_planted_at_a_secret_path(tmp_path):
    target = tmp_path / "stolen"
    (tmp_path / "keys").mkdir()
    os.symlink(target, tmp_path / "keys" / "alice.sign_secret")
    with pytest.raises(KeyFileError, match="overwrite"):
        save_identity(Identity.generate("alice"), tmp_path / "keys")
    assert not target.exists()


# ------------------------------------------------------------------ trust store
def test_trust_store_from_entries_pins_peers_by_name():
    # Prepare
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    entries = [entry(alice, pub_address="tcp://10.0.0.1:5550",
                     router_address="tcp://10.0.0.1:5551"), entry(bob)]
    # Execute
    trust = TrustStore.from_entries(entries)
    # Assert
    assert trust.names == ["alice", "bob"] and len(trust) == 2 and "bob" in trust
    assert trust.get("alice") == alice.peer("tcp://10.0.0.1:5550", "tcp://10.0.0.1:5551")
    assert trust.curve_keys() == {alice.curve_public, bob.curve_public}
    assert TrustStore.from_entries([p.to_entry() for p in trust]).get("bob") == trust.get("bob")
    with pytest.raises(UnknownSender, match="mallory"):
        trust.get("mallory")


@pytest.mark.parametrize("change, match", [
    ({"sign_key": None}, "peer 'alice': field 'sign_key'"),
    ({"sign_key": "ed25519:AAAA"}, "peer 'alice': field 'sign_key'"),
    ({"curve_key": "not-a-key"}, "peer 'alice': field 'curve_key'"),
    ({"pub_address": "10.0.0.1:5550"}, "peer 'alice': field 'pub_address'"),
    ({"router_address": 5551}, "peer 'alice': field 'router_address'"),
    ({"name": "a b"}, "field 'name'"),
    ({"port": 5550}, "peer 'alice': unknown field"),
])
def test_invalid_trust_entry_names_the_peer_and_field(change, match):
    bad = entry(Identity.generate("alice")) | change
    with pytest.raises(ConfigError, match=match):
        TrustStore.from_entries([bad])


def test_trust_entry_missing_a_key_is_refused():
    bad = entry(Identity.generate("alice"))
    del bad["curve_key"]
    with pytest.raises(ConfigError, match="peer 'alice': missing field 'curve_key'"):
        TrustStore.from_entries([bad])


def test_a_name_or_key_pinned_twice_is_refused():
    alice = Identity.generate("alice")
    with pytest.raises(ConfigError, match="pinned twice"):
        TrustStore.from_entries([entry(alice), entry(alice)])
    with pytest.raises(ConfigError, match="share a signing key"):
        TrustStore.from_entries([entry(alice), entry(alice) | {"name": "alias"}])


def test_peer_fingerprints_match_keygen_output():
    me = Identity.generate("alice")
    peer = Peer("alice", me.sign_public, me.curve_public)
    assert peer.sign_fingerprint == fingerprint(me.sign_public)
    assert peer.curve_fingerprint == fingerprint(curve_raw(me.curve_public))
