"""The patch files' Parquet schema: how [257, 64] tensors are stored and read back.

Each tensor column is ``fixed_size_binary`` holding one C-contiguous little-endian
array per row; the field metadata records ``shape`` and ``dtype``. Parquet stores
such a column without per-element repetition levels, so it writes much faster than a
list<float> tensor column (BENCHMARKS.md), and reading it back is a zero-copy
``np.frombuffer``. Any Parquet reader sees plain bytes::

    np.frombuffer(row["noisy_mag"], dtype=np.float32).reshape(257, 64)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

TENSOR_COLUMNS = ("noisy_mag", "clean_mag", "noisy_phase")


def tensor_field(name: str, shape: tuple[int, ...], dtype: np.dtype) -> pa.Field:
    width = int(np.prod(shape)) * np.dtype(dtype).itemsize
    meta = {"shape": ",".join(map(str, shape)), "dtype": np.dtype(dtype).name}
    return pa.field(name, pa.binary(width), nullable=False, metadata=meta)


def to_arrow(columns: dict[str, np.ndarray]) -> pa.Table:
    """Columns of equal length → a table; arrays with ndim > 1 become tensor columns."""
    arrays, fields = [], []
    for name, values in columns.items():
        if values.ndim > 1:
            values = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False)
            field = tensor_field(name, values.shape[1:], values.dtype)
            arrays.append(pa.FixedSizeBinaryArray.from_buffers(field.type, len(values), [None, pa.py_buffer(values)]))
        else:
            arrays.append(pa.array(values))
            field = pa.field(name, arrays[-1].type, nullable=False)
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def tensor_spec(field: pa.Field) -> tuple[tuple[int, ...], np.dtype]:
    meta = field.metadata or {}
    if b"shape" not in meta:
        raise ValueError(f"column {field.name!r} has no tensor shape metadata")
    shape = tuple(int(s) for s in meta[b"shape"].decode().split(","))
    return shape, np.dtype(meta[b"dtype"].decode())


def decode_column(table: pa.Table, name: str) -> np.ndarray:
    """A tensor column of an Arrow table as one [rows, *shape] array."""
    shape, dtype = tensor_spec(table.schema.field(name))
    column = table.column(name).combine_chunks()
    if len(column) == 0:
        return np.zeros((0, *shape), dtype)
    width = int(np.prod(shape)) * dtype.itemsize
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)[column.offset * width : (column.offset + len(column)) * width]
    return data.view(dtype).reshape(len(column), *shape)


def decode_bytes(values: np.ndarray, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """A numpy object array of per-row bytes (how Ray Data's numpy batches show a
    binary column) → one [rows, *shape] array."""
    if len(values) == 0:
        return np.zeros((0, *shape), dtype)
    return np.frombuffer(b"".join(values), dtype=dtype).reshape(len(values), *shape)
