"""LocalCluster: M real `twinnode run` processes on 127.0.0.1, for tests, the demo and benchmarks.

    with LocalCluster(workdir, [PartySpec("alice", "a.csv"), ...], "schema.toml", k=3) as c:
        c.start()                 # every node: real process, free ports, keys and config
        c.wait_connected()        # until each node has a heartbeat from every peer
        c.ctl("alice", "publish", release="/abs/dir", wait=True)
        c.wait_holdings({"alice": 3})

Per party it writes `workdir/<name>/keys/` (identity API, secrets 0600), `node.toml` (every
other party pinned, plus any `extra_peers`), and runs `python -m twinnode.cli run` with its
state in `workdir/<name>/state` and its log in `workdir/<name>/node.log`. Training workers are
pinned to one CPU each, round robin. Waits poll the nodes' control sockets; nothing sleeps a
fixed time. `close()` sends SIGTERM, then SIGKILL to the process group after a grace period.
`endpoints` (where each node binds and where its peers dial it) and `launcher` (a command
prefix per node) let twinnode.lab.netns run the same nodes in network namespaces.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from twinnode.errors import ControlError, TwinnodeError
from twinnode.node.control_client import request_sync, socket_path
from twinnode.trust.certs import format_curve_key
from twinnode.trust.identity import Identity, Peer, format_sign_key, save_identity

POLL = 0.05  # seconds between two polls of a condition

# (index, name) -> (pub and router addresses peers dial, pub and router addresses it binds)
Endpoints = Callable[[int, str], tuple[str, str, str, str]]


class ClusterError(TwinnodeError):
    """A local cluster node did not start, connect or converge in time (with its log tail)."""


@dataclass(frozen=True)
class PartySpec:
    """One party of the cluster: its node name and its private data file."""

    name: str
    data: Path


@dataclass
class _Member:
    spec: PartySpec
    dir: Path
    identity: Identity
    pub: str
    router: str
    cpu: int
    bind: tuple[str, str]  # where the node binds its PUB and ROUTER (peers dial pub/router)
    proc: subprocess.Popen | None = None

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def config(self) -> Path:
        return self.dir / "node.toml"

    @property
    def log(self) -> Path:
        return self.dir / "node.log"

    def peer(self) -> Peer:
        return self.identity.peer(self.pub, self.router)


class LocalCluster:
    """M node processes on this machine; a context manager that always tears them down."""

    def __init__(self, workdir: str | Path, parties: Sequence[PartySpec], schema: str | Path, *,
                 k: int = 3, privacy: Mapping[str, Any] | None = None,
                 generator: Mapping[str, Any] | None = None, auto_train: bool = False,
                 heartbeat_interval: float = 0.25, catchup_interval: float = 2.0,
                 screening: Mapping[str, Any] | None = None, extra_peers: Iterable[Peer] = (),
                 log_level: str = "info", log_format: str = "kv",
                 cpus: Sequence[int] | None = None, grace: float = 15.0,
                 endpoints: Endpoints | None = None,
                 launcher: Callable[[str], Sequence[str]] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.schema = Path(schema).resolve()
        self.grace = grace
        names = [p.name for p in parties]
        if len(set(names)) != len(names):
            raise ClusterError(f"party names must be distinct, got {names}")
        cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        endpoints = endpoints or loopback_endpoints(len(parties))
        self.launcher = launcher
        self.members: dict[str, _Member] = {}
        for i, spec in enumerate(parties):
            directory = self.workdir / spec.name
            directory.mkdir(parents=True, exist_ok=True)
            identity = Identity.generate(spec.name)
            save_identity(identity, directory / "keys")
            pub, router, bind_pub, bind_router = endpoints(i, spec.name)
            self.members[spec.name] = _Member(
                PartySpec(spec.name, Path(spec.data).resolve()), directory, identity,
                pub, router, cpus[i % len(cpus)], (bind_pub, bind_router))
        self.extra_peers = tuple(extra_peers)
        for m in self.members.values():
            doc = {"node": {"name": m.spec.name, "state_dir": str(m.state),
                            "log_level": log_level, "log_format": log_format},
                   "data": {"path": str(m.spec.data), "schema": str(self.schema)},
                   "privacy": dict(privacy or {}), "generator": dict(generator or {}),
                   "twins": {"k": k}, "training": {"auto": auto_train, "cpus": [m.cpu]},
                   "network": {"pub": m.bind[0], "router": m.bind[1],
                               "heartbeat_interval": heartbeat_interval,
                               "catchup_interval": catchup_interval},
                   "keys": {"dir": str(m.dir / "keys")},
                   "screening": dict(screening or {})}
            others = [o.peer() for o in self.members.values() if o is not m]
            m.config.write_text(to_toml(doc, [*others, *self.extra_peers]), encoding="utf-8")

    # ---- processes ----

    def start(self, *names: str, timeout: float = 60.0, args: Sequence[str] = ()) -> None:
        """Start the named nodes (default: all not running) and wait for their control
        sockets; `args` go to `twinnode run` (e.g. --recovered-state --spent-epsilon 1)."""
        chosen = names or tuple(n for n, m in self.members.items() if not self.running(n))
        for name in chosen:
            m = self.members[name]
            if self.running(name):
                raise ClusterError(f"node {name} is already running")
            env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
            prefix = list(self.launcher(name)) if self.launcher else []
            with open(m.log, "ab") as log:
                m.proc = subprocess.Popen(
                    [*prefix, sys.executable, "-m", "twinnode.cli", "run", "--config",
                     str(m.config), *args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True)
        for name in chosen:
            self.wait_until(partial(self._answers, name), timeout, f"{name} to start",
                            names=[name])

    def running(self, name: str) -> bool:
        proc = self.members[name].proc
        return proc is not None and proc.poll() is None

    def stop(self, name: str, timeout: float | None = None) -> int:
        """SIGTERM, wait (SIGKILL after the grace period); return the exit code."""
        proc = self.members[name].proc
        if proc is None:
            raise ClusterError(f"node {name} was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout or self.grace)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
        return proc.returncode

    def kill(self, name: str) -> None:
        """SIGKILL the node and its training worker (its process group)."""
        proc = self.members[name].proc
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)

    def close(self) -> None:
        """Stop every node: SIGTERM to all, then wait; SIGKILL what outlives the grace period."""
        procs = [m.proc for m in self.members.values() if m.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_group(proc)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    # ---- control ----

    def ctl(self, name: str, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one control command to a node; its result (ControlError on failure)."""
        return request_sync(socket_path(self.members[name].state), cmd, args, timeout)

    def status(self, name: str) -> dict[str, Any]:
        return self.ctl(name, "status")

    def wait_connected(self, timeout: float = 60.0, names: Sequence[str] | None = None) -> None:
        """Until every (running) node has a heartbeat from every other running node."""
        names = list(names or [n for n in self.members if self.running(n)])

        def connected() -> bool:
            for name in names:
                seen = {p["name"] for p in self.status(name)["peers"]
                        if p["last_heartbeat_age"] is not None and p["connected"]}
                if not set(names) - {name} <= seen:
                    return False
            return True

        self.wait_until(connected, timeout, "every node to hear every peer", names=names)

    def wait_holdings(self, expected: Mapping[str, int], timeout: float = 60.0,
                      names: Sequence[str] | None = None) -> None:
        """Until each named (default: running) node holds `expected[sender]` twins per sender."""
        names = list(names or [n for n in self.members if self.running(n)])

        def holding() -> bool:
            return all(all(self.status(n)["twins"].get(s, 0) >= c for s, c in expected.items())
                       for n in names)

        self.wait_until(holding, timeout, f"holdings {dict(expected)}", names=names)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str,
                   names: Sequence[str] = ()) -> None:
        """Poll `condition` (a node not answering yet counts as False) until true or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                proc = self.members[name].proc
                if proc is not None and proc.poll() is not None:
                    raise ClusterError(f"node {name} exited with {proc.returncode} while "
                                       f"waiting for {what}:\n{self.log_tail(name)}")
            try:
                if condition():
                    return
            except ControlError:
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}:\n{self.log_tail(n)}" for n in names)
                raise ClusterError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
            time.sleep(POLL)

    def _answers(self, name: str) -> bool:
        self.ctl(name, "status", timeout=5.0)
        return True

    # ---- files ----

    def state_dir(self, name: str) -> Path:
        return self.members[name].state

    def config_path(self, name: str) -> Path:
        return self.members[name].config

    def log_path(self, name: str) -> Path:
        return self.members[name].log

    def identity(self, name: str) -> Identity:
        return self.members[name].identity

    def peer(self, name: str) -> Peer:
        """The party as a pinned peer (keys and addresses)."""
        return self.members[name].peer()

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.members[name].log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def loopback_endpoints(n: int) -> Endpoints:
    """Free ports on 127.0.0.1 for `n` nodes; each binds where its peers dial."""
    ports = free_ports(2 * n)

    def endpoints(i: int, name: str) -> tuple[str, str, str, str]:
        pub, router = (f"tcp://127.0.0.1:{ports[2 * i + j]}" for j in (0, 1))
        return pub, router, pub, router

    return endpoints


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now (held open until all are found)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def to_toml(doc: Mapping[str, Mapping[str, Any]], peers: Iterable[Peer] = ()) -> str:
    """A node config as TOML text: one table per section, then one [[peers]] per peer."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()
                  if value is not None]
        lines.append("")
    for peer in peers:
        lines += ["[[peers]]", f"name = {_toml_value(peer.name)}",
                  f"sign_key = {_toml_value(format_sign_key(peer.sign_key))}",
                  f"curve_key = {_toml_value(format_curve_key(peer.curve_key))}",
                  f"pub_address = {_toml_value(peer.pub_address)}",
                  f"router_address = {_toml_value(peer.router_address)}", ""]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string here
