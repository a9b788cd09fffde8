"""Schema parsing, hashing and row validation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SCHEMA

from twinnode.data import frame_to_arrays, read_table, write_table
from twinnode.errors import DataError, SchemaError
from twinnode.schema import Schema


def test_same_schema_in_another_column_order_has_the_same_hash(small_schema):
    # Prepare: the same columns, declared in reverse order
    blocks = SMALL_SCHEMA.split("\n[")
    head, cols = blocks[0], ["[" + b for b in blocks[1:]]
    reordered = head + "\n" + "\n".join(reversed(cols))
    # Execute
    other = Schema.from_toml(reordered)
    # Assert
    assert other.hash == small_schema.hash
    assert other.names == small_schema.names


@pytest.mark.parametrize("change", [
    ('upper = 50', 'upper = 51'),
    ('"south", "east"', '"east", "south"'),
    ('lower = 18.0', 'lower = 17.0'),
    ('outcome = "visits"', ''),
])
def test_any_meaningful_change_changes_the_hash(small_schema, change):
    other = Schema.from_toml(SMALL_SCHEMA.replace(*change))
    assert other.hash != small_schema.hash


def test_description_does_not_change_the_hash(small_schema):
    text = SMALL_SCHEMA.replace('type = "binary"', 'type = "binary"\ndescription = "smokes"')
    assert Schema.from_toml(text).hash == small_schema.hash


def test_to_toml_round_trips(small_schema):
    again = Schema.from_toml(small_schema.to_toml())
    assert again == small_schema and again.hash == small_schema.hash


@pytest.mark.parametrize("text, message", [
    ('[columns.a]\ntype = "ordinal"', "unknown type 'ordinal'"),
    ('[columns.a]\ntype = "count"', "integer 'upper'"),
    ('[columns.a]\ntype = "continuous"\nlower = 1.0\nupper = 0.0', "must be below"),
    ('[columns.a]\ntype = "continuous"\nlower = 0.0', "finite number 'upper'"),
    ('[columns.a]\ntype = "categorical"\nlevels = ["x"]', "at least two"),
    ('[columns.a]\ntype = "categorical"\nlevels = ["x", "x"]', "distinct"),
    ('[columns.a]\ntype = "binary"\nlevels = ["x"]', "not allowed"),
    ('outcome = "b"\n[columns.a]\ntype = "binary"', "not one of the columns"),
    ('outcome = "a"\n[columns.a]\ntype = "binary"', "must be a count"),
    ('colums = 1', "unknown top-level"),
    ('[columns."1a"]\ntype = "binary"', "a name is"),
    ('this is not toml', "not valid TOML"),
])
def test_invalid_schema_is_rejected_with_a_specific_message(text, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_toml(text, "bad.toml")


def test_missing_schema_file_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        Schema.load(tmp_path / "nope.toml")


def test_csv_round_trip_keeps_every_value(small_schema, small_frame, small_csv):
    again = read_table(small_csv, small_schema)
    pd.testing.assert_frame_equal(again, small_frame, check_exact=False, rtol=1e-8)


def _write_raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "raw.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("row, column, rule", [
    ("3,17.5,0,north", "age", "continuous"),
    ("3,abc,0,north", "age", "continuous"),
    ("3,40,2,north", "smoker", "binary"),
    ("3,40,1,west", "region", "not a level"),
    ("51,40,1,north", "visits", "0..50"),
    ("2.5,40,1,north", "visits", "whole number"),
    ("-1,40,1,north", "visits", "whole number"),
    (",40,1,north", "visits", "whole number"),
    ("3,inf,1,north", "age", "finite"),
])
def test_bad_value_names_file_line_column_and_rule(tmp_path, small_schema, row, column, rule):
    path = _write_raw(tmp_path, "visits,age,smoker,region\n1,30,0,south\n" + row + "\n")
    with pytest.raises(DataError) as info:
        read_table(path, small_schema)
    msg = str(info.value)
    assert str(path) in msg and "line 3" in msg and f"column '{column}'" in msg and rule in msg


def test_missing_and_extra_columns_are_named(tmp_path, small_schema):
    path = _write_raw(tmp_path, "visits,age,smoker,zip\n1,30,0,123\n")
    with pytest.raises(DataError, match="missing column\\(s\\): region.*not in the schema: zip"):
        read_table(path, small_schema)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("visits,age,smoker,region\n", "no data rows"),
    ('visits,age,smoker,region\n1,30,0,"south\n', "well-formed|line"),
])
def test_empty_or_broken_files_give_a_data_error(tmp_path, small_schema, text, message):
    with pytest.raises(DataError, match=message):
        read_table(_write_raw(tmp_path, text), small_schema)


def test_many_bad_values_are_summarised_not_listed_forever(tmp_path, small_schema):
    rows = "\n".join("1,200,0,north" for _ in range(100))
    path = _write_raw(tmp_path, "visits,age,smoker,region\n" + rows + "\n")
    with pytest.raises(DataError, match="and 95 more bad value"):
        read_table(path, small_schema)


def test_check_arrays_rejects_codes_outside_levels(small_schema, small_frame):
    arrays = frame_to_arrays(small_schema, small_frame)
    arrays["region"] = arrays["region"].copy()
    arrays["region"][7] = 3
    with pytest.raises(DataError, match="region.*row 7"):
        small_schema.check_arrays(arrays)


def test_write_table_leaves_no_temp_file_behind(tmp_path, small_schema, small_frame):
    write_table(small_frame, tmp_path / "x.csv", small_schema)
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]
    assert np.isclose(read_table(tmp_path / "x.csv", small_schema)["age"].sum(),
                      small_frame["age"].sum())


def test_column_bounds_are_the_public_ones_and_only_counts_and_continuous_have_them(small_schema):
    assert small_schema.column("visits").bounds == (0, 50)
    assert small_schema.column("age").bounds == (18.0, 90.0)
    for name in ("smoker", "region"):
        with pytest.raises(ValueError, match="no bounds"):
            small_schema.column(name).bounds

