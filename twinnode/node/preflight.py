"""What a node checks before it binds anything: `twinnode run` at start, `twinnode check` offline.

    check_inputs(config)  the schema (it must name an outcome) and every row of the data file
                          against it; `twinnode run` calls it first, so a bad CSV stops the
                          node with the data error (exit 5) before a socket, the store or the
                          ledger is touched
    run_checks(config)    the same, plus the keys, the pinned peers (their fingerprints, to
                          compare out of band), the state directory and its ledger, and the
                          two listening addresses (can they be bound here?); each check is
                          a `Check`, and one failing does not hide the others

Nothing here writes to the disk or the network: a port is tried with a plain socket that is
closed at once, and a running node on the same state directory is found through its lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from twinnode.analysis.options import MIN_PEERS as SCREENING_MIN_PEERS
from twinnode.errors import (
    KeyFileError,
    PrivacyError,
    StoreError,
    TransportError,
    TwinnodeError,
)
from twinnode.node.config import NodeConfig
from twinnode.schema import Schema
from twinnode.store.layout import StateLayout
from twinnode.trust.certs import curve_raw
from twinnode.trust.identity import Identity, fingerprint


@dataclass(frozen=True)
class Inputs:
    """What `check_inputs` read: the schema and the data's row count."""

    schema: Schema
    rows: int


@dataclass(frozen=True)
class Check:
    """One line of `twinnode check`: `error` is None when it passed; `note` marks advice."""

    name: str
    detail: str
    error: TwinnodeError | None = None
    note: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def check_inputs(config: NodeConfig) -> Inputs:
    """Load the schema and validate every row of the data file; SchemaError or DataError,
    each naming its file (and the row and column for data)."""
    from twinnode.data import read_table  # pandas: only when the check runs

    schema = Schema.load(config.data.schema)
    frame = read_table(config.data.path, schema)
    return Inputs(schema, len(frame))


def run_checks(config: NodeConfig) -> list[Check]:
    """Every offline check of a node's config, in order; failures do not stop the others."""
    out: list[Check] = []
    schema: list[Schema] = []

    def step(name: str, fn: Callable[[], str]) -> bool:
        try:
            out.append(Check(name, fn()))
            return True
        except TwinnodeError as exc:
            out.append(Check(name, str(exc), exc))
            return False

    def load_schema() -> str:
        schema.append(Schema.load(config.data.schema))
        s = schema[0]
        return (f"{config.data.schema}: {len(s.columns)} columns, outcome {s.outcome}, "
                f"hash {s.short_hash}")

    if step("schema", load_schema):
        step("data", lambda: _data(config, schema[0]))
    else:
        out.append(Check("data", "not checked: the schema did not load", note=True))
    step("keys", lambda: _keys(config))
    step("peers", lambda: _peers(config))
    running = running_pid(StateLayout.of(config.state_dir))
    step("state", lambda: _state(config, running))
    step("ports", lambda: _ports(config, running))
    out += _notes(config)
    return out


def _data(config: NodeConfig, schema: Schema) -> str:
    from twinnode.data import read_table

    rows = len(read_table(config.data.path, schema))
    return f"{config.data.path}: {rows} rows fit the schema"


def _keys(config: NodeConfig) -> str:
    me = Identity.load(config.keys_dir, config.name)
    for peer in config.peers:
        if peer.sign_key == me.sign_public or peer.curve_key == me.curve_public:
            raise KeyFileError(f"peer {peer.name!r} is pinned with this node's own key: its "
                               f"entry must hold {peer.name}'s public keys, not ours")
    return (f"{config.keys_dir}/{config.name}.*: signing {fingerprint(me.sign_public)}, "
            f"CURVE {fingerprint(curve_raw(me.curve_public))}")


def _peers(config: NodeConfig) -> str:
    if not config.peers:
        return "none pinned: this node publishes, but receives nothing to analyse"
    rows = [f"{p.name}: signing {fingerprint(p.sign_key)}, CURVE "
            f"{fingerprint(curve_raw(p.curve_key))}; {p.pub_address}, {p.router_address}"
            for p in config.peers]
    return (f"{len(rows)} pinned; compare each fingerprint with the one that site's "
            "`twinnode check` (or keygen) prints for its own keys:\n      " + "\n      ".join(rows))


def running_pid(layout: StateLayout) -> int | None:
    """The pid of a node holding this state directory's lock, or None when none does."""
    if not layout.lock.exists():
        return None
    with open(layout.lock, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read(32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _state(config: NodeConfig, running: int | None) -> str:
    root = config.state_dir
    from twinnode.generator.privacy import Ledger  # no JAX: the ledger is plain JSON
    from twinnode.node.recovery import lost_state, marker_path

    lost = lost_state(Ledger(root), marker_path(config.keys_dir, config.name))
    if lost is not None:  # `run` refuses to start on it without --recovered-state
        raise PrivacyError(lost)
    if not root.exists():
        parent = next((p for p in root.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"{root}: does not exist and {parent} is not writable, so the "
                             "node cannot create its state directory")
        return f"{root}: will be created at first start (a new privacy ledger with it)"
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        raise StoreError(f"{root}: not a writable directory")

    try:
        snap = Ledger(root, cap_epsilon=config.privacy.cap_epsilon).snapshot()
    except PrivacyError as exc:
        raise PrivacyError(f"privacy ledger: {exc}") from None
    cap = snap["cap_epsilon"]
    budget = (f"epsilon spent {snap['spent_epsilon']:g}"
              + (f" of {cap:g}" if cap is not None else " (no cap)"))
    who = f"a node is running on it (pid {running})" if running else "no node is running on it"
    return f"{root}: {budget}; {who}"


def _ports(config: NodeConfig, running: int | None) -> str:
    addresses = (config.network.pub, config.network.router)
    if running:
        return (f"{', '.join(addresses)}: not tried, the node running on this state directory "
                f"(pid {running}) holds them")
    return "; ".join(check_bindable(a) for a in addresses)


def check_bindable(address: str) -> str:
    """Bind (then close) a plain socket where ZeroMQ will listen; TransportError if it fails."""
    scheme, _, rest = address.partition("://")
    if scheme == "ipc":
        path = Path(rest)
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise TransportError(f"{address}: directory {path.parent} is missing or not "
                                 "writable")
        return f"{address} can be created"
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if port == "*" or port == "0":
        return f"{address}: the system picks a free port"
    bind_host = "" if host in ("*", "0.0.0.0") else host
    try:
        infos = socket.getaddrinfo(bind_host or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, ValueError) as exc:
        raise TransportError(f"{address}: cannot resolve {host!r} here ({exc})") from None
    family, kind, proto, _, where = infos[0]
    with contextlib.closing(socket.socket(family, kind, proto)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq does
        try:
            sock.bind(where)
        except OSError as exc:
            raise TransportError(f"{address}: cannot bind here ({exc.strerror}); another "
                                 "process holds the port, or the address is not this "
                                 "machine's") from None
    return f"{address} is free"


def _notes(config: NodeConfig) -> list[Check]:
    """Advice that is not a failure."""
    notes = []
    n = len(config.peers)
    if config.screening.policy != "off" and n < SCREENING_MIN_PEERS:
        notes.append(Check("screening", f"policy {config.screening.policy}: the consensus "
                           f"needs at least {SCREENING_MIN_PEERS} peers to compare (each against "
                           f"the others); with {n} pinned, peers are judged against the local "
                           "rows only, and releases that are not noise-aware not at all",
                           note=True))
    return notes


def first_failure(checks: list[Check]) -> TwinnodeError | None:
    """The first failed check's error (its exit code is the command's)."""
    return next((c.error for c in checks if c.error is not None), None)

