"""NetLab: one Linux network namespace per node, joined by veth links, with faults on demand.

    reason = unavailable()            # None, or why namespaces cannot be used here
    with NetLab(["a", "b", "c"], workdir) as lab:
        lab.up()                      # namespaces, a veth per pair, addresses, routes, relays
        lab.exec_prefix("a")          # ["ip", "netns", "exec", <ns of a>]: run a process there
        lab.partition({"a"}, {"b", "c"}); lab.heal()        # links down, links up
        lab.set_faults({"*": {"delay": 0.2, "jitter": 0.15}})  # the relays' policy

The topology is a full mesh, as sites on a WAN each have their own path to each other: node i
has the address 10.77.0.i on its loopback, and for every pair a veth whose two ends carry a
/32 route to the other node. Taking a pair's veth down is a cut cable (routes gone, packets
dropped, established TCP connections left hanging until they time out), so a partition cuts
exactly the links between the two sides, and a flapping node has all its links go down and up.

Each node binds its sockets on 127.0.0.1 inside its namespace; a relay (twinnode.lab.relay) in
the same namespace listens on 10.77.0.i and forwards, so every byte from a peer crosses it and
it can add delay, jitter, stalls, resets and refused connections per (peer, node). This kernel
has no `netem` qdisc; where one does, `netem()` sets delay/loss/reordering on the veths too.

Names: every namespace is `tnx<pid>x<n>-<node>` (pid of the creating process), so `close()`,
run in a `finally`, deletes exactly this lab's, and `cleanup_leftovers()` (run by `up()`)
deletes those of processes that have died, killing what still runs inside them.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from twinnode.lab.harness import ClusterError

PREFIX = "tnx"
PUB_PORT, ROUTER_PORT = 7001, 7002  # the public ports; the node binds +100 on 127.0.0.1
_labs = itertools.count()


class NetnsError(ClusterError):
    """A namespace, link or relay could not be set up (with the `ip` command's message)."""


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (not root, no `ip`, creation fails); None
    when they can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    probe = f"{PREFIX}{os.getpid()}xprobe"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except NetnsError as e:
        return f"cannot create a network namespace with a veth: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> str:
    """Run `ip ARGS`; its output, or NetnsError with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def cleanup_leftovers() -> list[str]:
    """Delete the namespaces of labs whose process has died (and kill what runs in them)."""
    removed = []
    for ns in _namespaces():
        owner = ns[len(PREFIX):].split("x", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


def _namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines()
            if line.split() and line.startswith(PREFIX)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class NetLab:
    """Namespaces, links and relays for a set of named nodes; a context manager that always
    removes them."""

    def __init__(self, names: Sequence[str], workdir: str | Path) -> None:
        if len(names) > 250:
            raise NetnsError("at most 250 nodes (one /24)")
        self.names = list(names)
        self.workdir = Path(workdir).resolve()
        self.tag = f"{PREFIX}{os.getpid()}x{next(_labs)}"
        self.policy = self.workdir / "faults.json"
        self.relays: dict[str, subprocess.Popen] = {}
        self.created: list[str] = []
        self.down: set[frozenset[str]] = set()

    # ---- names and addresses ----

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"10.77.0.{self.names.index(name) + 1}"

    def endpoints(self, i: int, name: str) -> tuple[str, str, str, str]:
        """For LocalCluster: peers dial the relay on the public address, the node binds on
        127.0.0.1 behind it."""
        a = self.address(name)
        return (f"tcp://{a}:{PUB_PORT}", f"tcp://{a}:{ROUTER_PORT}",
                f"tcp://127.0.0.1:{PUB_PORT + 100}", f"tcp://127.0.0.1:{ROUTER_PORT + 100}")

    def exec_prefix(self, name: str) -> list[str]:
        """The command prefix that runs a process in `name`'s namespace."""
        return ["ip", "netns", "exec", self.ns(name)]

    def _dev(self, to: str) -> str:
        return f"v{self.names.index(to)}"  # the veth towards `to`, in the other's namespace

    # ---- life ----

    def up(self) -> None:
        """Create everything (after removing dead labs' leftovers); NetnsError on failure."""
        cleanup_leftovers()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_faults({})
        for name in self.names:
            ip("netns", "add", self.ns(name))
            self.created.append(self.ns(name))
            ip("-n", self.ns(name), "link", "set", "lo", "up")
            ip("-n", self.ns(name), "addr", "add", f"{self.address(name)}/32", "dev", "lo")
        for a, b in itertools.combinations(self.names, 2):
            ip("link", "add", "name", self._dev(b), "netns", self.ns(a), "type", "veth",
               "peer", "name", self._dev(a), "netns", self.ns(b))
            self.link(a, b, True)
        for name in self.names:
            self._start_relay(name)

    def close(self) -> None:
        """Stop the relays and delete every namespace this lab made (safe to call twice)."""
        for proc in self.relays.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in self.created:
            _delete_namespace(ns)
        self.created = []

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_relay(self, name: str) -> None:
        peers = [f"--peer={o}={self.address(o)}" for o in self.names if o != name]
        a = self.address(name)
        log = open(self.workdir / f"relay-{name}.log", "ab")
        with log:
            self.relays[name] = subprocess.Popen(
                [*self.exec_prefix(name), sys.executable, "-m", "twinnode.lab.relay",
                 f"--policy={self.policy}", f"--me={name}", *peers,
                 f"--stats={self.workdir / f'relay-{name}.json'}", f"--seed={len(self.relays)}",
                 f"--forward={a}:{PUB_PORT}=127.0.0.1:{PUB_PORT + 100}",
                 f"--forward={a}:{ROUTER_PORT}=127.0.0.1:{ROUTER_PORT + 100}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (self.workdir / f"relay-{name}.json").exists():
            if self.relays[name].poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / f"relay-{name}.log").read_text(errors="replace")
                raise NetnsError(f"the relay for {name} did not start:\n{tail[-2000:]}")
            time.sleep(0.05)

    # ---- faults ----

    def link(self, a: str, b: str, up: bool) -> None:
        """Bring the a–b link up (with its routes) or down (a cut cable), both ends."""
        for x, y in ((a, b), (b, a)):
            ip("-n", self.ns(x), "link", "set", self._dev(y), "up" if up else "down")
        if up:
            for x, y in ((a, b), (b, a)):
                ip("-n", self.ns(x), "route", "replace", f"{self.address(y)}/32", "dev",
                   self._dev(y), "src", self.address(x))
            self.down.discard(frozenset((a, b)))
        else:
            self.down.add(frozenset((a, b)))

    def partition(self, side: Iterable[str], other: Iterable[str]) -> None:
        """Cut every link between the two sides."""
        for a, b in itertools.product(list(side), list(other)):
            self.link(a, b, False)

    def isolate(self, name: str) -> None:
        """Cut every link of one node."""
        self.partition([name], [o for o in self.names if o != name])

    def heal(self) -> None:
        """Bring every cut link up again."""
        for pair in list(self.down):
            a, b = sorted(pair)
            self.link(a, b, True)

    def set_faults(self, rules: Mapping[str, Mapping[str, float]]) -> None:
        """Give the relays a new policy (see twinnode.lab.relay); {} passes bytes unchanged."""
        tmp = self.policy.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": dict(rules), "at": time.time()}))
        os.replace(tmp, self.policy)
        time.sleep(0.5)  # the relays look every 0.2 s

    def relay_stats(self) -> dict[str, Any]:
        """Each relay's counts: connections, refused, cut, stalled."""
        out = {}
        for name in self.names:
            try:
                out[name] = json.loads((self.workdir / f"relay-{name}.json").read_text())
            except (OSError, ValueError):
                out[name] = {}
        return out

    def netem_works(self) -> bool:
        """Whether this kernel has the netem qdisc (tried on a link of this lab)."""
        a, b = self.names[:2]
        try:
            self.netem(a, b, "delay 1ms")
            self.netem(a, b, None)
            return True
        except NetnsError:
            return False

    def netem(self, a: str, b: str, spec: str | None) -> None:
        """Set `tc qdisc netem SPEC` on both ends of a–b (e.g. "delay 100ms 50ms loss 2%
        reorder 25%"), or remove it (None)."""
        for x, y in ((a, b), (b, a)):
            dev = ["dev", self._dev(y)]
            args = (["qdisc", "replace", *dev, "root", "netem", *spec.split()] if spec
                    else ["qdisc", "del", *dev, "root"])
            done = subprocess.run(["tc", "-n", self.ns(x), *args], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise NetnsError(f"tc {' '.join(args)}: {done.stderr.strip()}")
