"""Reading patch batches for training: each Train worker reads its own share of a split's
Parquet row groups with pyarrow (:func:`shard_tables`), in a background thread, and cuts
them into shuffled batches (:func:`patch_batches`); evaluation reads a split directly
(:func:`local_batches`).

Training reads without Ray Data: its streaming executor, run by a split coordinator actor
for ``streaming_split``, polls without pause while it has no task in flight, taking a
CPU that a 2-CPU machine needs for training (BENCHMARKS.md, "Training data path").
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from speech_enhance.pipeline import storage, store

TRAIN_COLUMNS = ["noisy_mag", "clean_mag"]
PHASE_COLUMN = "noisy_phase"  # read only for losses that go back to waveforms
ORDER_COLUMNS = ["mixture_id", "patch_index"]  # read only to join consecutive patches (sequence > 1)
PREFETCH = 2  # row groups read ahead of the training step

T = TypeVar("T")


def columns(with_phase: bool = False, sequence: int = 1) -> list[str]:
    names = [*TRAIN_COLUMNS, PHASE_COLUMN] if with_phase else list(TRAIN_COLUMNS)
    return names + ORDER_COLUMNS if sequence > 1 else names


def sequence_starts(mixture_id: np.ndarray, patch_index: np.ndarray, length: int) -> np.ndarray:
    """Rows that begin ``length`` consecutive patches of one mixture (rows in file order),
    the runs cut end to end; a run's last patches that do not fill one are left out."""
    n = len(mixture_id)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    breaks = np.ones(n, dtype=bool)
    breaks[1:] = (mixture_id[1:] != mixture_id[:-1]) | (patch_index[1:] != patch_index[:-1] + 1)
    run_start = np.flatnonzero(breaks)
    run_end = np.append(run_start[1:], n)
    run = np.cumsum(breaks) - 1
    position = np.arange(n) - run_start[run]
    return np.flatnonzero((position % length == 0) & (position + length <= run_end[run] - run_start[run]))


def join_patches(array: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """[rows, bins, frames] patches → [len(starts), bins, length × frames]: ``length`` rows
    from each start, joined along time."""
    rows = array[starts[:, None] + np.arange(length)]  # [groups, length, bins, frames]
    return rows.transpose(0, 2, 1, 3).reshape(len(starts), array.shape[1], length * array.shape[2])


def to_tensors(table: pa.Table) -> tuple[torch.Tensor, ...]:
    """(noisy, clean) magnitudes, and the noisy phase where the table has it, as float32
    [batch, 1, 257, 64] tensors."""
    names = [c for c in columns(with_phase=True) if c in table.column_names]
    return tuple(torch.from_numpy(store.decode_column(table, c).astype("float32")).unsqueeze(1) for c in names)


def patch_batches(tables: Iterable[pa.Table], batch_size: int, shuffle_buffer: int = 0, seed: int | None = None,
                  sequence: int = 1) -> Iterator[tuple[torch.Tensor, ...]]:
    """Training batches (noisy, clean[, phase]) of ``batch_size`` patches, float32
    [batch, 1, 257, 64], from Arrow tables of patch rows (:func:`shard_tables`).
    With ``sequence`` > 1 (the iterator then has :data:`ORDER_COLUMNS`) each example is that
    many consecutive patches of one mixture, [batch, 1, 257, 64 × sequence], and the
    counts (``batch_size``, ``shuffle_buffer``) are of examples.

    The tables' tensor columns are read in place
    (:func:`~speech_enhance.pipeline.store.decode_column`); each training batch is then one
    gather of its patches, the only copy a patch goes through here (and its float16 →
    float32 conversion, on the gathered patches only). With ``shuffle_buffer`` the patches
    of a window of at least that many are drawn in random order (seeded), as Ray's local
    shuffle buffer would; patches left over at a window's end start the next one."""
    rng = np.random.default_rng(seed)
    window = max(shuffle_buffer, batch_size)
    chunks: list[list[np.ndarray]] = []
    count = 0

    def emit(final: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        nonlocal chunks, count
        arrays = [c[0] if len(chunks) == 1 else np.concatenate(c) for c in zip(*chunks, strict=True)]
        order = rng.permutation(count) if shuffle_buffer else np.arange(count)
        full = count if final else count - count % batch_size
        for start in range(0, full, batch_size):
            index = order[start:start + batch_size]
            yield tuple(torch.from_numpy(np.take(a, index, axis=0).astype(np.float32, copy=False)).unsqueeze(1)
                        for a in arrays)
        rest = order[full:]
        chunks = [[np.take(a, rest, axis=0) for a in arrays]] if len(rest) else []
        count = len(rest)

    for table in tables:
        names = [c for c in columns(with_phase=True) if c in table.column_names]
        arrays = [store.decode_column(table, c) for c in names]
        if sequence > 1:
            starts = sequence_starts(table["mixture_id"].to_numpy(), table["patch_index"].to_numpy(), sequence)
            arrays = [join_patches(a, starts, sequence) for a in arrays]
        chunks.append(arrays)
        count += len(arrays[0])
        if count >= window:
            yield from emit(final=False)
    if count:
        yield from emit(final=True)


def split_dir(data_dir: str | os.PathLike, split: str) -> str:
    """The split's folder (a local path or URI), checked to hold Parquet files."""
    path = storage.join(storage.resolve(data_dir), split)
    if not storage.list_files(path, ".parquet"):
        raise FileNotFoundError(f"{path}: no Parquet patch files (is the {split!r} split empty?)")
    return path


def split_pieces(data_dir: str | os.PathLike, split: str) -> list[tuple[str, pq.FileMetaData, int]]:
    """(file, its Parquet footer, row group) for every row group of a split, in file order:
    the footers are read once, here, and reused for every epoch's reads."""
    pieces = []
    for path, _ in storage.list_files(split_dir(data_dir, split), ".parquet"):
        fs, inner = storage.filesystem(path)
        meta = pq.read_metadata(inner, filesystem=fs)
        pieces += [(path, meta, group) for group in range(meta.num_row_groups)]
    return pieces


def shard_tables(pieces: list[tuple[str, pq.FileMetaData, int]], columns: list[str], rank: int = 0,
                 world: int = 1, seed: int | None = None) -> Iterator[pa.Table]:
    """Rank ``rank`` of ``world``'s share of a split's row groups (:func:`split_pieces`),
    as Arrow tables of ``columns``.

    The row groups, in file order or, with ``seed``, in a random order drawn from it, are
    cut into ``world`` runs of equally many rows (the last ``rows % world`` are left
    out): every rank gets as many patches, so DDP's ranks take as many steps."""
    if seed is not None:
        pieces = [pieces[i] for i in np.random.default_rng(seed).permutation(len(pieces))]
    share = sum(meta.row_group(group).num_rows for _, meta, group in pieces) // world
    start, stop, offset = rank * share, (rank + 1) * share, 0
    filesystems: dict[str, tuple] = {}  # path -> (filesystem, path in it): an S3 one is costly to make
    for path, meta, group in pieces:
        rows = meta.row_group(group).num_rows
        low, high = max(start - offset, 0), min(stop - offset, rows)
        offset += rows
        if low < high:
            if path not in filesystems:
                filesystems[path] = storage.filesystem(path)
            fs, inner = filesystems[path]
            table = pq.ParquetFile(inner, filesystem=fs, metadata=meta).read_row_group(group, columns=columns)
            yield table.slice(low, high - low)


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int = PREFETCH) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` ahead: Parquet reads
    release the GIL, so reading overlaps the training step. An error in the thread is
    raised here; closing the generator (a time limit ends the epoch) stops the thread."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(_Raised(err))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def local_batches(
    data_dir: str | os.PathLike, split: str, batch_size: int = 64, with_phase: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of a split read in this process with pyarrow (no Ray), in file order."""
    fs, inner = storage.filesystem(split_dir(data_dir, split))
    dataset = pads.dataset(inner, format="parquet", filesystem=fs)
    for batch in dataset.to_batches(columns=columns(with_phase), batch_size=batch_size):
        yield to_tensors(pa.Table.from_batches([batch]))
