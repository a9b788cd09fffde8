"""Release directories: the fast reader of a node's publish accepts only what the full check
accepts, with the same values; anything else goes the full way."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.data import frame_to_arrays, randhie, read_table, split_parties
from twinnode.errors import DataError
from twinnode.lab.simtwins import as_release, posterior_twins
from twinnode.releasedir import _plain_arrays, load_release, save_release, twin_filename


def full_way(path: Path, schema) -> dict[str, np.ndarray] | str:
    """What `read_table` makes of a twin file: its arrays, or its error message."""
    try:
        return frame_to_arrays(schema, read_table(path, schema))
    except DataError as exc:
        return str(exc)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("which", ["small", "randhie"])
def test_a_saved_release_reads_the_fast_way_with_the_values_of_the_full_check(
        tmp_path, small_schema, which):
    # Prepare
    if which == "small":
        schema, frame = small_schema, make_small_frame(small_schema, 300)
    else:
        schema, full = randhie()
        frame = split_parties(full, parties=20, seed=0).parties[0]
    twins = posterior_twins(schema, frame, sender="a", k=5, seed=3)
    save_release(as_release(twins), tmp_path / "r", schema)
    # Execute
    fast = [_plain_arrays(tmp_path / "r" / twin_filename(i), schema) for i in range(5)]
    back = load_release(tmp_path / "r", schema)
    # Assert: every file took the fast way, and equals what the full check makes of it
    for i, arrays in enumerate(fast):
        assert arrays is not None
        want = full_way(tmp_path / "r" / twin_filename(i), schema)
        assert isinstance(want, dict)
        assert_same(arrays, want)
        assert_same(dict(back.twins[i].arrays), want)


@pytest.mark.parametrize("column, cell", [
    ("smoker", " 1"), ("smoker", "1.0"), ("smoker", "true"), ("smoker", "2"), ("smoker", ""),
    ("region", " north"), ("region", "North"), ("region", ""),
    ("visits", "3.0"), ("visits", "3.5"), ("visits", "-1"), ("visits", "nan"), ("visits", "1e1"),
    ("visits", "999999"),
    ("age", "nan"), ("age", "inf"), ("age", "-5"), ("age", "1e400"), ("age", " 40"),
    ("age", "NA"), ("age", "40 "), ("age", "0x10"),
])
def test_an_unusual_cell_reads_as_the_full_check_reads_it(tmp_path, small_schema, column,
                                                          cell):
    # Prepare: a saved release with one cell of its first twin replaced
    twins = posterior_twins(small_schema, make_small_frame(small_schema, 50), sender="a", k=1,
                            seed=0)
    save_release(as_release(twins), tmp_path / "r", small_schema)
    path = tmp_path / "r" / twin_filename(0)
    lines = path.read_text(encoding="utf-8").splitlines()
    names = lines[0].split(",")
    cells = lines[3].split(",")
    cells[names.index(column)] = cell
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    want = full_way(path, small_schema)
    # Execute
    fast = _plain_arrays(path, small_schema)
    try:
        got: dict[str, np.ndarray] | str = dict(load_release(tmp_path / "r",
                                                             small_schema).twins[0].arrays)
    except DataError as exc:
        got = str(exc)
    # Assert: the fast reader takes no file the full check refuses, and gives its values
    if isinstance(want, str):
        assert fast is None and got == want
    else:
        assert isinstance(got, dict)
        assert_same(got, want)
        if fast is not None:
            assert_same(fast, want)
