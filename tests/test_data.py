"""Frames and arrays, twins as frames, the bundled randhie example and the party splitter."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twinnode.cli.main import main
from twinnode.data import frame_to_arrays, randhie, read_table, split_parties, twin_frame
from twinnode.errors import DataError, SchemaError
from twinnode.schema import Schema
from twinnode.twins import Provenance, Twin


@pytest.fixture(scope="module")
def rand():
    return randhie()


def test_randhie_has_all_rows_and_fits_its_schema(rand):
    schema, frame = rand
    assert len(frame) == 20190
    assert schema.outcome == "mdvis" and frame["mdvis"].max() == 77


def test_split_is_deterministic_disjoint_and_sized(rand):
    _, frame = rand
    a = split_parties(frame, parties=4, fractions=[0.1], seed=3)
    b = split_parties(frame, parties=4, fractions=[0.1], seed=3)
    assert all(x.equals(y) for x, y in zip(a.parties, b.parties))
    assert len(a.test) == round(0.2 * 20190)
    share = (20190 - len(a.test)) // 4
    assert [len(p) for p in a.parties] == [round(0.1 * share)] + [share] * 3
    c = split_parties(frame, parties=4, fractions=[0.1], seed=4)
    assert not a.parties[0].equals(c.parties[0])


def test_skewed_split_under_represents_the_group_in_party_zero(rand):
    _, frame = rand
    part = split_parties(frame, parties=3, split="skewed", seed=0)
    population = frame["idp"].mean()
    assert part.parties[0]["idp"].mean() < 0.2 * population
    # the group rows party 0 does not take stay with the others
    others = [p["idp"].mean() for p in part.parties[1:]]
    assert all(x > population for x in others) and abs(others[0] - others[1]) < 0.05


def test_bad_split_arguments_are_data_errors(rand):
    _, frame = rand
    with pytest.raises(DataError, match="fractions"):
        split_parties(frame, parties=3, fractions=[0.5, 0.5])
    with pytest.raises(DataError, match="unknown split"):
        split_parties(frame, parties=3, split="weird")


def test_example_command_writes_files_that_load(tmp_path, capsys):
    assert main(["example", "randhie", "--out", str(tmp_path), "--parties", "3",
                 "--fraction", "0.05"]) == 0
    schema = Schema.load(tmp_path / "schema.toml")
    assert schema.hash == randhie()[0].hash
    sizes = [len(read_table(tmp_path / f"party-{i}.csv", schema)) for i in range(3)]
    assert sizes[0] < 300 < sizes[1] == sizes[2]
    assert "party-2.csv" in capsys.readouterr().out
    assert np.isfinite(read_table(tmp_path / "test.csv", schema)["disea"]).all()


def test_a_twin_becomes_the_typed_frame_it_was_made_from(small_schema, small_frame):
    arrays = frame_to_arrays(small_schema, small_frame)
    prov = Provenance(sender="alice", schema_hash=small_schema.hash, epsilon=1.0, delta=1e-3,
                      n=len(small_frame), k=1, index=0, relation="add-remove", release="r",
                      created=1.0)
    frame = twin_frame(Twin(prov, arrays), small_schema)
    pd.testing.assert_frame_equal(frame, small_frame)
    assert frame["region"].dtype == "category"
    assert list(frame["region"].cat.categories) == ["north", "south", "east"]


def test_a_twin_made_under_another_schema_is_not_read_as_a_frame(small_schema, small_frame):
    prov = Provenance(sender="bob", schema_hash="0" * 64, epsilon=1.0, delta=1e-3,
                      n=len(small_frame), k=1, index=0, relation="add-remove", release="r",
                      created=1.0)
    twin = Twin(prov, frame_to_arrays(small_schema, small_frame))
    with pytest.raises(SchemaError, match="twin from bob was made under schema 000000000000"):
        twin_frame(twin, small_schema)
