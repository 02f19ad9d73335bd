"""Arrow arrays, batches and tables made from Python values without pyarrow importing pandas:
``pa.array`` imports pandas on its first call, to ask whether its input is a pandas object
(about 0.15 s of CPU and 40 MB in every process that writes the listing or a manifest). The
arrays are built from their buffers instead: the very arrays ``pa.array`` makes, for the types
mountproc's Parquet files hold (strings, bytes, integers, booleans, lists of strings)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import pyarrow as pa

_INTEGERS = {pa.int64(): np.int64, pa.int32(): np.int32}


def array(values: Collection[Any], type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)``: None is null; a ``str`` that is not valid UTF-8 raises
    ``UnicodeEncodeError``."""
    items = values if isinstance(values, list) else list(values)
    nulls = items.count(None)
    if nulls == len(items):  # e.g. the listing's skip reasons, nearly always
        return pa.nulls(nulls, type)
    bitmap = _bits([v is not None for v in items]) if nulls else None
    if nulls:
        empty = () if pa.types.is_list(type) else _EMPTY.get(type)
        items = [empty if v is None else v for v in items]
    if type in _INTEGERS:
        numbers = np.array(items, dtype=_INTEGERS[type])
        return pa.Array.from_buffers(type, len(items), [bitmap, pa.py_buffer(numbers)], nulls)
    if type == pa.bool_():
        return pa.Array.from_buffers(type, len(items), [bitmap, _bits(items)], nulls)
    if type in (pa.string(), pa.binary()):
        blob, offsets = _text(items) if type == pa.string() else (b"".join(items), _offsets(items))
        return pa.Array.from_buffers(type, len(items), [bitmap, offsets, pa.py_buffer(blob)], nulls)
    if pa.types.is_list(type):
        child = array([x for v in items for x in v], type.value_type)
        buffers = [bitmap, _offsets(items)]
        return pa.Array.from_buffers(type, len(items), buffers, nulls, children=[child])
    raise TypeError(f"no Arrow array of {type} from Python values here")


_EMPTY: dict[pa.DataType, Any] = {pa.string(): "", pa.binary(): b"", pa.bool_(): False}
_EMPTY.update({kind: 0 for kind in _INTEGERS})


def _text(items: list[str]) -> tuple[bytes, pa.Buffer]:
    """The UTF-8 bytes of ``items`` laid end to end, and their offsets (ASCII: in one go)."""
    joined = "".join(items)
    if joined.isascii():
        return joined.encode("ascii"), _offsets(items)
    blobs = [v.encode() for v in items]
    return b"".join(blobs), _offsets(blobs)


def scalar(value: Any, type: pa.DataType) -> pa.Scalar:
    """``pa.scalar(value, type)`` (which imports pandas, as ``pa.array`` does)."""
    return array([value], type)[0]


def counting(n: int) -> pa.Array:
    """0, 1, ..., n - 1 as int64."""
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])


def batch(columns: Mapping[str, Collection[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of ``schema`` from a column of values per field."""
    arrays = [array(columns[f.name], f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def table(columns: Mapping[str, Collection[Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from a column of values per field."""
    return pa.Table.from_batches([batch(columns, schema)], schema=schema)


# numpy views of Arrow arrays and back, without ``Array.to_numpy`` (which imports pandas too)


def bools(flags: np.ndarray) -> pa.Array:
    """A boolean array (no nulls) of numpy's ``flags``."""
    return pa.Array.from_buffers(pa.bool_(), len(flags), [None, _bits(flags)])


def int32s(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """An int32 array of ``values``, null where ``valid`` is false."""
    nulls = len(values) - int(valid.sum())
    bitmap = _bits(valid) if nulls else None
    return pa.Array.from_buffers(pa.int32(), len(values), [bitmap, pa.py_buffer(values)], nulls)


def int64_view(values: pa.Array) -> np.ndarray:
    """An int64 array without nulls as numpy's (no copy)."""
    assert values.null_count == 0, "an int64 array with nulls"
    data = np.frombuffer(values.buffers()[1], dtype=np.int64)
    return data[values.offset : values.offset + len(values)]


def bools_view(values: pa.Array) -> np.ndarray:
    """A boolean array without nulls as numpy's."""
    bits = np.unpackbits(np.frombuffer(values.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[values.offset : values.offset + len(values)].astype(bool)


def _bits(flags: Sequence[bool] | np.ndarray) -> pa.Buffer:
    """A little-endian bitmap of ``flags``."""
    return pa.py_buffer(np.packbits(np.array(flags, dtype=bool), bitorder="little"))


def _offsets(items: Sequence[Sized]) -> pa.Buffer:
    """The int32 offsets of ``items`` laid end to end."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)), out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise OverflowError("over 2 GiB of values in one Arrow array")
    return pa.py_buffer(offsets.astype(np.int32))
