"""The node's configuration: frozen dataclasses read from one TOML file, validated once.

Every error is a ConfigError that names the file, the section and the key, e.g.
`node.toml: [privacy] epsilon: must be > 0, got -1`. Unknown sections and keys are errors
too (a typo must not silently fall back to a default). Relative paths resolve against the
config file's directory. docs/NODE.md lists every key with its default.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, overload

from twinnode.analysis import options as opt
from twinnode.errors import ConfigError, TwinnodeError
from twinnode.generator.settings import BATCHINGS as _BATCHINGS
from twinnode.generator.settings import OUTCOME_LIKELIHOODS, VARIANTS, GeneratorSettings, TrainPlan
from twinnode.node.peersfile import read_entries
from twinnode.trust.identity import ADDRESS_RE, Peer, check_name, peer_from_entry

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
BATCHINGS = tuple(_BATCHINGS)
SECTIONS = ("node", "data", "privacy", "generator", "twins", "training", "network", "keys",
            "peers", "screening", "analysis")
BIND_RE = ADDRESS_RE  # tcp://HOST:PORT or ipc://PATH


@dataclass(frozen=True)
class NodeSection:
    name: str
    state_dir: Path
    log_level: str = "info"
    log_format: str = "kv"


@dataclass(frozen=True)
class DataSection:
    path: Path
    schema: Path


_PLAN = TrainPlan()          # defaults live with the generator, in one place
_GEN = GeneratorSettings()


@dataclass(frozen=True)
class PrivacySection:
    epsilon: float = _PLAN.epsilon
    delta: float | None = None          # None: 1/N
    cap_epsilon: float | None = None    # None: no cap
    batching: str = _PLAN.batching
    epochs: float = _PLAN.epochs
    q: float = _PLAN.q
    marginal_share: float | None = None  # None: the generator's default for the batching


@dataclass(frozen=True)
class TrainingSection:
    auto: bool = False
    cpus: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NetworkSection:
    pub: str
    router: str
    heartbeat_interval: float = 1.0
    catchup_interval: float = 10.0
    catchup_batch: int = 64
    hwm: int = 10_000
    max_rows: int = 1_000_000           # rows in one peer twin (wire.WireLimits.max_rows)
    relink_after: int = 5               # heartbeats of a peer's silence before a relink (0: off)
    relink_max: float = 30.0            # seconds: the longest wait between two relinks
    recovery_wait: float = 60.0         # seconds a recovering node waits for every peer


@dataclass(frozen=True)
class ScreeningSection:
    policy: str = "flag"
    threshold: float = 0.01


@dataclass(frozen=True)
class AnalysisSection:
    """This site's defaults for `ctl analyze` (its arguments override them); `twinnode
    analyze`'s defaults, from `analysis.options`."""

    weight: str | float = opt.DEFAULT_WEIGHT   # "auto" or a λ in [0, 1]
    rule: str = opt.DEFAULT_RULE
    heterogeneity: str = opt.DEFAULT_HETEROGENEITY
    interval: str = opt.DEFAULT_INTERVAL
    level: float = opt.DEFAULT_LEVEL
    agreement_alpha: float = opt.DEFAULT_AGREEMENT_ALPHA
    on_disagreement: str = opt.DEFAULT_ON_DISAGREEMENT


@dataclass(frozen=True)
class NodeConfig:
    """One node's whole configuration, as read from `path`."""

    path: Path
    node: NodeSection
    data: DataSection
    privacy: PrivacySection
    generator: GeneratorSettings
    k: int
    training: TrainingSection
    network: NetworkSection
    keys_dir: Path
    peers: tuple[Peer, ...]             # [[peers]] of node.toml, then those of peers_file
    screening: ScreeningSection
    peers_file: Path | None = None
    analysis: AnalysisSection = AnalysisSection()

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def state_dir(self) -> Path:
        return self.node.state_dir


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    return parse_config(text, path)


def parse_config(text: str, path: str | Path) -> NodeConfig:
    """Validate config text; `path` names the file in errors and anchors relative paths."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} "
                          f"(sections: {', '.join(SECTIONS)})")
    base = path.resolve().parent

    def section(name: str) -> _Section:
        return _Section(doc, name, path, base)

    node = _node_section(section("node"))
    data = section("data")
    data_s = DataSection(path=data.path("path", required=True, must_exist=True),
                         schema=data.path("schema", required=True, must_exist=True))
    data.finish()
    privacy = _privacy_section(section("privacy"))
    generator = _generator_section(section("generator"))
    tw = section("twins")
    k = tw.integer("k", 100, lo=1, hi=100_000)
    tw.finish()
    tr = section("training")
    training = TrainingSection(auto=tr.get("auto", bool, False), cpus=tr.cpus("cpus"))
    tr.finish()
    network = _network_section(section("network"))
    ke = section("keys")
    keys_dir = ke.path("dir", "keys")
    peers_file = ke.path("peers_file", "peers.toml")
    ke.finish()
    peers = _peers([(path, e) for e in _entries(doc.get("peers", []), path)]
                   + [(peers_file, e) for e in read_entries(peers_file)], node.name, network)
    sc = section("screening")
    screening = ScreeningSection(policy=sc.choice("policy", opt.POLICIES, "flag"),
                                 threshold=sc.number("threshold", 0.01, lo=0.0, hi=1.0,
                                                     lo_open=True, hi_open=True))
    sc.finish()
    return NodeConfig(path=path, node=node, data=data_s, privacy=privacy, generator=generator,
                      k=k, training=training, network=network, keys_dir=keys_dir, peers=peers,
                      screening=screening, peers_file=peers_file,
                      analysis=_analysis_section(section("analysis")))


def read_peers(config: NodeConfig) -> tuple[Peer, ...]:
    """The peers `config`'s files pin now (node.toml's [[peers]] and the peers file), checked
    as at start: a running node's reload."""
    doc = tomllib.loads(config.path.read_text(encoding="utf-8"))
    inline = [(config.path, e) for e in _entries(doc.get("peers", []), config.path)]
    from_file = [(config.peers_file, e) for e in read_entries(config.peers_file)] \
        if config.peers_file is not None else []
    return _peers(inline + from_file, config.name, config.network)


@dataclass(frozen=True)
class Site:
    """What `twinnode card` and `twinnode peers` need of node.toml (its data need not exist)."""

    name: str
    config: Path
    keys_dir: Path
    peers_file: Path
    pub: str
    router: str


def read_site(path: str | Path) -> Site:
    """This site's name, keys, peers file and addresses from node.toml, checked lightly."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (make one with: twinnode init "
                          "NAME)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    base = path.resolve().parent
    name = _Section(doc, "node", path, base).get("name", str, required=True)
    try:
        check_name(name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: [node] name: {exc}") from None
    keys, net = _Section(doc, "keys", path, base), _Section(doc, "network", path, base)
    return Site(name, path, keys.path("dir", "keys"), keys.path("peers_file", "peers.toml"),
                net.address("pub"), net.address("router"))


def _node_section(node: _Section) -> NodeSection:
    name = node.get("name", str, required=True)
    try:
        check_name(name)
    except ConfigError as exc:
        raise node.error("name", str(exc)) from None
    out = NodeSection(name=name, state_dir=node.path("state_dir", "state"),
                      log_level=node.choice("log_level", LOG_LEVELS, "info"),
                      log_format=node.choice("log_format", LOG_FORMATS, "kv"))
    node.finish()
    return out


def _privacy_section(pr: _Section) -> PrivacySection:
    privacy = PrivacySection(
        epsilon=pr.number("epsilon", _PLAN.epsilon, lo=0.0, lo_open=True),
        delta=pr.number("delta", None, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        cap_epsilon=pr.number("cap_epsilon", None, lo=0.0, lo_open=True),
        batching=pr.choice("batching", BATCHINGS, _PLAN.batching),
        epochs=pr.number("epochs", _PLAN.epochs, lo=0.0, lo_open=True),
        q=pr.number("q", _PLAN.q, lo=0.0, hi=1.0, lo_open=True),
        marginal_share=pr.number("marginal_share", None, lo=0.0, hi=1.0,
                                 hi_open=True))
    if privacy.marginal_share and privacy.batching != "poisson":
        raise pr.error("marginal_share", "marginal anchoring needs batching = \"poisson\"")
    if privacy.cap_epsilon is not None and privacy.epsilon > privacy.cap_epsilon:
        raise pr.error("epsilon", f"{privacy.epsilon:g} exceeds cap_epsilon "
                                  f"{privacy.cap_epsilon:g}: no run could ever train")
    pr.finish()
    return privacy


def _generator_section(ge: _Section) -> GeneratorSettings:
    generator = GeneratorSettings(
        components=ge.integer("components", _GEN.components, lo=1, hi=1000),
        outcome=ge.choice("outcome", OUTCOME_LIKELIHOODS, _GEN.outcome),
        clip=ge.number("clip", _GEN.clip, lo=0.0, lo_open=True),
        learning_rate=ge.number("learning_rate", _GEN.learning_rate, lo=0.0, lo_open=True),
        head_learning_rate=ge.number("head_learning_rate", _GEN.head_learning_rate, lo=0.0,
                                     lo_open=True),
        center_head=ge.get("center_head", bool, _GEN.center_head),
        head_newton=ge.get("head_newton", bool, _GEN.head_newton),
        chunk=ge.integer("chunk", _GEN.chunk, lo=1, hi=100_000),
        variant=ge.choice("variant", VARIANTS, _GEN.variant),
        head_share=ge.number("head_share", _GEN.head_share, lo=0.0, hi=1.0, hi_open=True),
        average=ge.number("average", _GEN.average, lo=0.0, hi=1.0, hi_open=True),
        noise_aware=ge.get("noise_aware", bool, _GEN.noise_aware))
    ge.finish()
    return generator


def _analysis_section(an: _Section) -> AnalysisSection:
    an.used.add("weight")
    weight = an.values.get("weight", opt.DEFAULT_WEIGHT)
    if weight != opt.DEFAULT_WEIGHT and (type(weight) not in (int, float) or not 0 <= weight <= 1):
        raise an.error("weight", f"must be \"auto\" or a number in [0, 1], got {weight!r:.40}")
    analysis = AnalysisSection(
        weight=weight if weight == opt.DEFAULT_WEIGHT else float(weight),
        rule=an.choice("rule", opt.RULES, opt.DEFAULT_RULE),
        heterogeneity=an.choice("heterogeneity", opt.HETEROGENEITIES, opt.DEFAULT_HETEROGENEITY),
        interval=an.choice("interval", opt.INTERVALS, opt.DEFAULT_INTERVAL),
        level=an.number("level", opt.DEFAULT_LEVEL, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        agreement_alpha=an.number("agreement_alpha", opt.DEFAULT_AGREEMENT_ALPHA, lo=0.0,
                                  hi=1.0, lo_open=True, hi_open=True),
        on_disagreement=an.choice("on_disagreement", opt.ON_DISAGREEMENT,
                                  opt.DEFAULT_ON_DISAGREEMENT))
    an.finish()
    return analysis


def _network_section(ne: _Section) -> NetworkSection:
    network = NetworkSection(
        pub=ne.address("pub"), router=ne.address("router"),
        heartbeat_interval=ne.number("heartbeat_interval", 1.0, lo=0.01, hi=300.0),
        catchup_interval=ne.number("catchup_interval", 10.0, lo=0.1, hi=86_400.0),
        catchup_batch=ne.integer("catchup_batch", 64, lo=1, hi=10_000),
        hwm=ne.integer("hwm", 10_000, lo=10, hi=10_000_000),
        max_rows=ne.integer("max_rows", 1_000_000, lo=1, hi=1_000_000),
        relink_after=ne.integer("relink_after", 5, lo=0, hi=10_000),
        relink_max=ne.number("relink_max", 30.0, lo=0.1, hi=86_400.0),
        recovery_wait=ne.number("recovery_wait", 60.0, lo=0.0, hi=86_400.0))
    if 0 < network.relink_after < 2:
        raise ne.error("relink_after", "must be 0 (never relink) or at least 2 heartbeats")
    if network.pub == network.router:
        raise ne.error("router", f"{network.router} is also the pub address")
    ne.finish()
    return network


def _entries(entries: Any, path: Path) -> list[Any]:
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: [[peers]] must be an array of tables (write [[peers]])")
    return entries


def _peers(entries: list[tuple[Path, Any]], own: str,
           network: NetworkSection) -> tuple[Peer, ...]:
    """[[peers]] entries (with the file each comes from): each validated by
    identity.peer_from_entry, addresses required, no name or key twice."""
    peers: list[Peer] = []
    for i, (path, entry) in enumerate(entries):
        try:
            peer = peer_from_entry(entry, position=i)
        except TwinnodeError as exc:
            raise ConfigError(f"{path}: [[peers]] {exc}") from None
        label = f"{path}: [[peers]] peer {peer.name!r}"
        for key in ("pub_address", "router_address"):
            if getattr(peer, key) is None:
                raise ConfigError(f"{label}: field '{key}': required (where the node connects)")
        if peer.name == own:
            raise ConfigError(f"{label}: field 'name': is this node's own name; a node pins "
                              "itself automatically")
        if any(p.name == peer.name for p in peers):
            raise ConfigError(f"{label}: field 'name': pinned twice")
        for other in peers:
            if other.sign_key == peer.sign_key or other.curve_key == peer.curve_key:
                raise ConfigError(f"{label}: shares a key with peer {other.name!r}")
        if {peer.pub_address, peer.router_address} & {network.pub, network.router}:
            raise ConfigError(f"{label}: an address is this node's own [network] address")
        peers.append(peer)
    return tuple(peers)


_MISSING = object()


class _Section:
    """Typed reads from one [section]; every error names file, section and key."""

    def __init__(self, doc: Mapping[str, Any], name: str, path: Path, base: Path) -> None:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        self.values, self.name, self.file, self.base = value, name, path, base
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.name}] {key}: {message}")

    def get(self, key: str, kind: type, default: Any = _MISSING, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.values:
            if required or default is _MISSING:
                raise self.error(key, "required")
            return default
        value = self.values[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error(key, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, "
                                  f"got {value!r:.60}")
        return value

    @overload
    def number(self, key: str, default: float, *, lo: float = ..., hi: float = ...,
               lo_open: bool = ..., hi_open: bool = ...) -> float: ...

    @overload
    def number(self, key: str, default: None, *, lo: float = ..., hi: float = ...,
               lo_open: bool = ..., hi_open: bool = ...) -> float | None: ...

    def number(self, key: str, default: float | None, *, lo: float = -math.inf,
               hi: float = math.inf, lo_open: bool = False, hi_open: bool = False
               ) -> float | None:
        value = self.get(key, float, default)
        if value is None:
            return None
        below = value <= lo if lo_open else value < lo
        above = value >= hi if hi_open else value > hi
        if not math.isfinite(value) or below or above:
            parts = ([f"> {lo:g}" if lo_open else f">= {lo:g}"] if lo > -math.inf else []) + \
                    ([f"< {hi:g}" if hi_open else f"<= {hi:g}"] if hi < math.inf else [])
            raise self.error(key, f"must be {' and '.join(parts) or 'finite'}, got {value:g}")
        return value

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            raise self.error(key, f"must be an integer in {lo}..{hi}, got {value}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r:.40}")
        return value

    def path(self, key: str, default: str | None = None, *, required: bool = False,
             must_exist: bool = False) -> Path:
        value = self.get(key, str, _MISSING if required or default is None else default)
        if not value:
            raise self.error(key, "must be a non-empty path")
        resolved = (self.base / Path(value).expanduser()).resolve()
        if must_exist and not resolved.is_file():
            raise self.error(key, f"file not found: {resolved}")
        return resolved

    def address(self, key: str) -> str:
        value = self.get(key, str, required=True)
        if not BIND_RE.match(value) or value.startswith("inproc://"):
            raise self.error(key, f"{value!r:.60} is not an address like tcp://127.0.0.1:5550")
        return value

    def cpus(self, key: str) -> tuple[int, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return None
        if not value or not all(type(c) is int and 0 <= c < 4096 for c in value):
            raise self.error(key, f"must be a non-empty list of CPU numbers, got {value!r:.60}")
        return tuple(sorted(set(value)))

    def finish(self) -> None:
        unknown = sorted(set(self.values) - self.used)
        if unknown:
            raise self.error(", ".join(unknown), f"unknown key (keys of [{self.name}]: "
                                                 f"{', '.join(sorted(self.used))})")


_KIND_NAMES = {str: "a string", float: "a number", int: "an integer",
               bool: "a boolean (true or false)", list: "a list"}
