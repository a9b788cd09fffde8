"""Node config: defaults, relative paths, and errors that name the file, section and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from twinnode.cli.main import main as cli_main
from twinnode.errors import ConfigError
from twinnode.lab.harness import to_toml
from twinnode.node.config import load_config, parse_config
from twinnode.trust.identity import Identity


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("visits\n1\n")
    (tmp_path / "schema.toml").write_text("")
    return tmp_path


def minimal(**sections: dict) -> dict:
    doc = {"node": {"name": "alice"},
           "data": {"path": "data.csv", "schema": "schema.toml"},
           "network": {"pub": "tcp://127.0.0.1:5550", "router": "tcp://127.0.0.1:5551"}}
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return doc


def write(files: Path, doc: dict, peers=()) -> Path:
    path = files / "node.toml"
    path.write_text(to_toml(doc, peers))
    return path


def bob(port: int = 5560) -> object:
    return Identity.generate("bob").peer(f"tcp://127.0.0.1:{port}",
                                         f"tcp://127.0.0.1:{port + 1}")


def test_minimal_config_gets_documented_defaults_and_paths_relative_to_the_file(files):
    # Execute
    config = load_config(write(files, minimal(), [bob()]))
    # Assert
    assert config.name == "alice"
    assert config.state_dir == files / "state" and config.keys_dir == files / "keys"
    assert config.data.path == files / "data.csv"
    assert (config.privacy.epsilon, config.privacy.delta, config.privacy.cap_epsilon) == \
        (1.0, None, None)
    assert (config.privacy.batching, config.privacy.epochs, config.privacy.q) == \
        ("poisson", 400.0, 0.1)
    assert config.k == 100 and config.training.auto is False and config.training.cpus is None
    assert config.network.heartbeat_interval == 1.0 and config.screening.policy == "flag"
    assert [p.name for p in config.peers] == ["bob"]
    assert config.peers[0].router_address == "tcp://127.0.0.1:5561"


def test_every_section_round_trips_its_values(files):
    doc = minimal(node={"log_level": "debug", "log_format": "json", "state_dir": "/tmp/x"},
                  privacy={"epsilon": 2, "delta": 1e-5, "cap_epsilon": 4.0,
                           "batching": "fixed", "epochs": 5, "q": 0.05},
                  generator={"components": 4, "outcome": "negbinomial", "clip": 1.5,
                             "learning_rate": 0.01, "head_learning_rate": 0.03,
                             "center_head": False},
                  twins={"k": 7}, training={"auto": True, "cpus": [1, 0]},
                  network={"heartbeat_interval": 0.5, "catchup_interval": 3,
                           "catchup_batch": 8, "hwm": 100},
                  keys={"dir": "k"}, screening={"policy": "exclude", "threshold": 0.05})
    config = load_config(write(files, doc))
    assert config.node.log_format == "json" and config.state_dir == Path("/tmp/x")
    assert config.privacy.epsilon == 2.0 and config.privacy.batching == "fixed"
    assert config.generator.outcome == "negbinomial" and config.k == 7
    assert config.generator.head_learning_rate == 0.03 and not config.generator.center_head
    assert config.training.cpus == (0, 1) and config.network.catchup_batch == 8
    assert config.keys_dir == files / "k" and config.screening.threshold == 0.05


@pytest.mark.parametrize("section, key, value, message", [
    ("privacy", "epsilon", -1, r"\[privacy\] epsilon: must be > 0, got -1"),
    ("privacy", "epsilon", "one", r"\[privacy\] epsilon: must be a number"),
    ("privacy", "delta", 1.0, r"\[privacy\] delta: must be > 0 and < 1"),
    ("privacy", "batching", "random", r"\[privacy\] batching: must be one of poisson, fixed"),
    ("generator", "head_learning_rate", 0, r"\[generator\] head_learning_rate: must be > 0"),
    ("twins", "k", 0, r"\[twins\] k: must be an integer in 1\.\.100000"),
    ("twins", "k", 2.5, r"\[twins\] k: must be an integer, got 2.5"),
    ("training", "auto", "yes", r"\[training\] auto: must be a boolean"),
    ("training", "cpus", [], r"\[training\] cpus: must be a non-empty list"),
    ("network", "pub", "localhost:1", r"\[network\] pub: 'localhost:1' is not an address"),
    ("network", "heartbeat_interval", 0, r"\[network\] heartbeat_interval: must be >= 0.01"),
    ("node", "log_format", "xml", r"\[node\] log_format: must be one of kv, json"),
    ("node", "name", "bad name", r"\[node\] name: invalid node name"),
    ("screening", "policy", "drop", r"\[screening\] policy: must be one of off, flag, exclude"),
    ("analysis", "heterogeneity", "reml",
     r"\[analysis\] heterogeneity: must be one of pmm, pm, dl, off, got 'reml'"),
    ("analysis", "interval", "z", r"\[analysis\] interval: must be one of t, normal"),
    ("analysis", "rule", "paper", r"\[analysis\] rule: must be one of mixed, reiter, rubin"),
    ("analysis", "on_disagreement", "drop",
     r"\[analysis\] on_disagreement: must be one of keep, local, got 'drop'"),
    ("analysis", "agreement_alpha", 0, r"\[analysis\] agreement_alpha: must be > 0 and < 1"),
    ("analysis", "level", 95, r"\[analysis\] level: must be > 0 and < 1, got 95"),
    ("analysis", "weight", 1.5, r"\[analysis\] weight: must be \"auto\" or a number in "
                                r"\[0, 1\], got 1.5"),
    ("analysis", "weight", "half", r"\[analysis\] weight: must be \"auto\" or a number"),
    ("analysis", "weight", True, r"\[analysis\] weight: must be \"auto\" or a number"),
])
def test_a_wrong_value_names_the_file_section_and_key(files, section, key, value, message):
    path = write(files, minimal(**{section: {key: value}}))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_analysis_defaults_are_twinnode_analyzes_and_every_key_round_trips(files):
    # Prepare: the defaults `twinnode analyze` and the analysis itself use
    from twinnode.analysis import options
    from twinnode.analysis.fit import AnalysisOptions

    plain = AnalysisOptions()
    values = {"weight": 0.3, "rule": "rubin", "heterogeneity": "dl", "interval": "normal",
              "level": 0.9, "agreement_alpha": 0.01, "on_disagreement": "local"}
    # Execute
    default = load_config(write(files, minimal())).analysis
    custom = load_config(write(files, minimal(analysis=values))).analysis
    whole = load_config(write(files, minimal(analysis={"weight": 1}))).analysis
    # Assert
    assert default.weight == options.DEFAULT_WEIGHT == "auto"
    assert (default.rule, default.heterogeneity, default.interval, default.level,
            default.agreement_alpha, default.on_disagreement) == \
        (plain.rule, plain.heterogeneity, plain.interval, plain.level, plain.agreement_alpha,
         plain.on_disagreement) == ("mixed", "pmm", "t", 0.95, 0.05, "keep")
    assert {key: getattr(custom, key) for key in values} == values
    assert whole.weight == 1.0 and isinstance(whole.weight, float)
    with pytest.raises(ConfigError, match=r"\[analysis\] heterogenity: unknown key \(keys "
                                          r"of \[analysis\]: agreement_alpha, "):
        load_config(write(files, minimal(analysis={"heterogenity": "off"})))


def test_unknown_keys_and_sections_are_errors_not_silent_defaults(files):
    with pytest.raises(ConfigError, match=r"\[privacy\] epsilom: unknown key"):
        load_config(write(files, minimal(privacy={"epsilom": 1.0})))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) privacyy"):
        load_config(write(files, {**minimal(), "privacyy": {"epsilon": 1.0}}))


def test_missing_required_keys_and_files_are_named(files):
    with pytest.raises(ConfigError, match=r"\[node\] name: required"):
        load_config(write(files, {k: v for k, v in minimal().items() if k != "node"}))
    with pytest.raises(ConfigError, match=r"\[network\] router: required"):
        load_config(write(files, minimal(network={"router": None})))
    with pytest.raises(ConfigError, match=r"\[data\] path: file not found: .*nope.csv"):
        load_config(write(files, minimal(data={"path": "nope.csv"})))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(files / "absent.toml")


def test_cross_field_mistakes_are_refused(files):
    with pytest.raises(ConfigError, match=r"\[privacy\] epsilon: 2 exceeds cap_epsilon 1"):
        load_config(write(files, minimal(privacy={"epsilon": 2.0, "cap_epsilon": 1.0})))
    with pytest.raises(ConfigError, match=r"\[network\] router: .* is also the pub address"):
        load_config(write(files, minimal(network={"router": "tcp://127.0.0.1:5550"})))


def test_peer_entries_are_validated_and_name_the_peer(files):
    # Prepare
    b = bob()
    me = Identity.generate("alice").peer("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001")
    text = to_toml(minimal(), [b]).replace('name = "bob"\nsign_key = "ed25519:',
                                           'name = "bob"\nsign_key = "ed25519:AAAA')
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"\[\[peers\]\] peer 'bob': field 'sign_key'"):
        parse_config(text, files / "node.toml")
    with pytest.raises(ConfigError, match=r"peer 'alice': field 'name': is this node's own"):
        load_config(write(files, minimal(), [me]))
    with pytest.raises(ConfigError, match="pinned twice|share"):
        load_config(write(files, minimal(), [b, b]))
    no_router = to_toml(minimal(), [b]).replace(f'router_address = "{b.router_address}"\n', "")
    with pytest.raises(ConfigError, match=r"peer 'bob': field 'router_address': required"):
        parse_config(no_router, files / "node.toml")
    clash = bob(port=5550)
    with pytest.raises(ConfigError, match="this node's own \\[network\\] address"):
        load_config(write(files, minimal(), [clash]))


def test_invalid_toml_is_a_config_error_naming_the_file(files):
    path = files / "node.toml"
    path.write_text("[node\nname = 1")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_config(path)


def test_twinnode_run_with_a_bad_config_exits_3_naming_the_key(files, capsys):
    path = write(files, minimal(twins={"k": -2}))
    assert cli_main(["run", "--config", str(path)]) == 3
    assert f"{path}: [twins] k: must be an integer in 1..100000, got -2" in \
        capsys.readouterr().err


def test_the_node_toml_init_writes_sets_the_analysis_defaults(files):
    from twinnode.node.config import AnalysisSection

    # Execute: a new site, as a user makes one
    assert cli_main(["init", "alice", "--dir", str(files), "--host", "127.0.0.1",
                     "--data", "data.csv"]) == 0
    config = load_config(files / "node.toml")
    # Assert: [analysis] is there, with `twinnode analyze`'s defaults
    assert "[analysis]" in (files / "node.toml").read_text()
    assert config.analysis == AnalysisSection()
