"""A twin's columns as typed bytes: each column in the smallest dtype that holds it faithfully.

The payload of a twin envelope is a msgpack array of `[name, dtype, data]` triples, one per
schema column in canonical order. The dtype follows from the schema alone, so the sender has no
choice and the receiver checks it exactly:

    binary       "bits"  packed 8 per byte, little bit order, zero padding bits
    categorical  "u1"    codes (or "u2" when there are more than 256 levels)
    count        "u1" / "u2" / "u4"  the smallest unsigned type that holds the schema's upper bound
    continuous   "f4"    little-endian float32, clipped to the float32 range inside the bounds

All multi-byte types are little-endian. Continuous columns travel as float32: they are
synthetic draws from a noisy posterior, so float32's 7 significant digits lose nothing that
carries information, and the clip to float32 values inside [lower, upper] keeps every decoded
value within the schema's bounds.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator, Mapping

import msgpack
import numpy as np
from numpy.typing import NDArray

from twinnode.errors import MalformedMessage, SchemaMismatch
from twinnode.schema import Column, Schema

_NUMPY = {"u1": "<u1", "u2": "<u2", "u4": "<u4", "f4": "<f4"}
_MAX_NAME = 64


def column_dtype(col: Column) -> str:
    """The wire dtype of a column, decided by its schema type and bound."""
    if col.type == "binary":
        return "bits"
    if col.type == "continuous":
        return "f4"
    top = col.cardinality - 1
    return "u1" if top <= 0xFF else "u2" if top <= 0xFFFF else "u4"


def column_nbytes(dtype: str, rows: int) -> int:
    """Exact byte length of a column of `rows` values in `dtype`."""
    if dtype == "bits":
        return (rows + 7) // 8
    return rows * np.dtype(_NUMPY[dtype]).itemsize


def max_payload_bytes(schema: Schema, rows: int) -> int:
    """The most bytes a valid payload of `rows` rows can take under `schema` (msgpack framing
    at its widest): bounds what a peer may send before anything is decoded."""
    total = 5  # array header
    for col in schema.columns:
        dtype = column_dtype(col)
        total += 1 + 5 + len(col.name.encode("utf-8")) + 1 + len(dtype) + 5
        total += column_nbytes(dtype, rows)
    return total


@lru_cache(maxsize=1024)
def float32_bounds(col: Column) -> tuple[np.float32, np.float32]:
    """The float32 values closest to the column's bounds from the inside."""
    finfo = np.finfo(np.float32)
    lower, upper = col.bounds
    lo = np.float32(max(lower, float(finfo.min)))
    hi = np.float32(min(upper, float(finfo.max)))
    if float(lo) < lower:
        lo = np.nextafter(lo, np.float32(np.inf))
    if float(hi) > upper:
        hi = np.nextafter(hi, np.float32(-np.inf))
    return lo, hi


def encode_columns(arrays: Mapping[str, NDArray[Any]], schema: Schema) -> tuple[bytes, int]:
    """Arrays in `Schema.check_arrays` layout -> (payload bytes, rows); DataError if they misfit."""
    rows = schema.check_arrays(arrays, source="twin")
    out: list[list[Any]] = []
    for col in schema.columns:
        a = np.asarray(arrays[col.name])
        dtype = column_dtype(col)
        if dtype == "bits":
            data = np.packbits(a.astype(np.uint8), bitorder="little").tobytes()
        elif dtype == "f4":
            lo, hi = float32_bounds(col)
            data = np.clip(a.astype("<f4"), lo, hi).tobytes()
        else:
            data = a.astype(_NUMPY[dtype]).tobytes()
        out.append([col.name, dtype, data])
    return msgpack.packb(out, use_bin_type=True), rows


def unpack_columns(payload: bytes, max_columns: int) -> list[tuple[str, str, bytes]]:
    """Payload bytes -> `(name, dtype, data)` triples, with msgpack limits; no schema yet."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=_MAX_NAME * 4, max_bin_len=len(payload),
                              max_array_len=max(max_columns, 3), max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises ValueError, StackError, UnicodeDecodeError, ...
        raise MalformedMessage(f"payload is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(doc, list):
        raise MalformedMessage(f"payload must be an array of columns, got {type(doc).__name__}")
    out = []
    for i, item in enumerate(doc):
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or not isinstance(item[1], str) or not isinstance(item[2], bytes)):
            raise MalformedMessage(f"payload column #{i} is not a [name, dtype, bytes] triple")
        out.append((item[0], item[1], item[2]))
    return out


def decode_columns(columns: list[tuple[str, str, bytes]], rows: int,
                   schema: Schema) -> "Columns":
    """Typed column bytes -> arrays in `Schema.check_arrays` layout; SchemaMismatch on misfit.

    Every value is checked here, on the wire's own narrow dtype (one min/max pass a column);
    the int64/float64 arrays are made when a column is first read (`Columns`): a node that
    stores a twin never reads its arrays, an analysis that reads it later does."""
    names = [c[0] for c in columns]
    if names != schema.names:
        raise SchemaMismatch(f"columns {names[:20]} do not match the schema's {schema.names[:20]}")
    raw: dict[str, tuple[str, NDArray[Any]]] = {}
    for col, (name, dtype, data) in zip(schema.columns, columns):
        want = column_dtype(col)
        if dtype != want:
            raise SchemaMismatch(f"column '{name}' has dtype {dtype!r:.20}, "
                                 f"the schema needs {want!r}")
        if len(data) != column_nbytes(dtype, rows):
            raise SchemaMismatch(f"column '{name}' has {len(data)} bytes, {rows} rows of "
                                 f"{dtype} need {column_nbytes(dtype, rows)}")
        raw[name] = (dtype, _check_one(col, dtype, data, rows))
    return Columns(raw, rows)


class Columns(Mapping[str, NDArray[Any]]):
    """A checked twin's columns: int64 (binary, codes, counts) and float64 (continuous) arrays,
    each made from the wire bytes when first read, then kept."""

    def __init__(self, raw: dict[str, tuple[str, NDArray[Any]]], rows: int) -> None:
        self._raw, self._rows = raw, rows
        self._made: dict[str, NDArray[Any]] = {}

    def __getitem__(self, name: str) -> NDArray[Any]:
        made = self._made.get(name)
        if made is None:
            dtype, raw = self._raw[name]
            if dtype == "bits":
                made = np.unpackbits(raw, count=self._rows, bitorder="little").astype(np.int64)
            else:
                made = raw.astype(np.float64 if dtype == "f4" else np.int64)
            self._made[name] = made
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _check_one(col: Column, dtype: str, data: bytes, rows: int) -> NDArray[Any]:
    """The column's values on their wire dtype (no copy), after checking every one of them."""
    raw = np.frombuffer(data, dtype=np.uint8 if dtype == "bits" else _NUMPY[dtype])
    if dtype == "bits":
        if rows % 8 and raw[-1] >> (rows % 8):
            raise SchemaMismatch(f"column '{col.name}': padding bits are not zero")
        return raw
    if not rows:
        return raw
    if dtype == "f4":
        # float32 x: lower <= x <= upper exactly when lo <= x <= hi (the float32 values
        # nearest the bounds from inside); NaN fails both, min and max carry it
        lo, hi = float32_bounds(col)
        if not (raw.min() >= lo and raw.max() <= hi):
            values = raw.astype(np.float64)
            lower, upper = col.bounds
            i = int(np.flatnonzero(~(np.isfinite(values) & (values >= lower)
                                     & (values <= upper)))[0])
            raise SchemaMismatch(f"column '{col.name}' row {i}: {values[i]!r} is not a finite "
                                 f"number in [{lower!r}, {upper!r}]")
        return raw
    if int(raw.max()) >= col.cardinality:
        i = int(np.flatnonzero(raw >= col.cardinality)[0])
        what = "code" if col.type == "categorical" else "count"
        raise SchemaMismatch(f"column '{col.name}' row {i}: {what} {int(raw[i])} outside "
                             f"0..{col.cardinality - 1}")
    return raw
