"""Reading patch batches: through Ray Data for training, or directly for evaluation."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from speech_enhance.pipeline import storage, store

TRAIN_COLUMNS = ["noisy_mag", "clean_mag"]
PHASE_COLUMN = "noisy_phase"  # read only for losses that go back to waveforms
ORDER_COLUMNS = ["mixture_id", "patch_index"]  # read only to join consecutive patches (sequence > 1)
# Patches per batch that Ray Data hands over (:func:`patch_batches`): its per-batch cost
# (~0.2 ms) spread over 256 patches instead of one training batch of 16.
READ_BATCH = 256


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


def patch_batches(iterator, batch_size: int, shuffle_buffer: int = 0, seed: int | None = None,  # noqa: ANN001
                  read_batch: int = READ_BATCH, sequence: int = 1) -> Iterator[tuple[torch.Tensor, ...]]:
    """Training batches (noisy, clean[, phase]) of ``batch_size`` patches, float32
    [batch, 1, 257, 64], from a Ray ``DataIterator`` (a Train worker's shard) or Dataset.
    With ``sequence`` > 1 (the iterator then has :data:`ORDER_COLUMNS`) each example is that
    many consecutive patches of one mixture, [batch, 1, 257, 64 × sequence], and the
    counts (``batch_size``, ``shuffle_buffer``) are of examples.

    Ray Data hands over large Arrow batches whose tensor columns are read in place
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

    for table in iterator.iter_batches(batch_size=read_batch, batch_format="pyarrow", prefetch_batches=2):
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


class PatchCollate(ArrowBatchCollateFn):
    """Ray Data collate: Arrow batch → (noisy, clean[, phase]) tensors, decoded zero-copy."""

    def __call__(self, batch: pa.Table) -> tuple[torch.Tensor, ...]:
        return to_tensors(batch)


def split_dir(data_dir: str | os.PathLike, split: str) -> str:
    """The split's folder (a local path or URI), checked to hold Parquet files."""
    path = storage.join(storage.resolve(data_dir), split)
    if not storage.list_files(path, ".parquet"):
        raise FileNotFoundError(f"{path}: no Parquet patch files (is the {split!r} split empty?)")
    return path


def read_split(data_dir: str | os.PathLike, split: str, shuffle_files: bool = False,  # noqa: ANN201
               with_phase: bool = False, sequence: int = 1):
    """The split as a Ray Dataset of the training columns (:func:`columns`).

    Read with Ray Data's V1 Parquet reader where the Ray version has the newer V2 as its
    default (``DataContext.use_datasource_v2``): V2 lists the files and reads their
    footers on new actor processes in every execution, which in training is every epoch,
    and those processes take the CPUs the training workers need; V1 reads the footers
    once, when the dataset is created."""
    context = ray.data.DataContext.get_current()
    default_reader = getattr(context, "use_datasource_v2", None)
    if default_reader is not None:
        context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(
            split_dir(data_dir, split), columns=columns(with_phase, sequence),
            shuffle="files" if shuffle_files else None
        )
    finally:
        if default_reader is not None:
            context.use_datasource_v2 = default_reader


def local_batches(
    data_dir: str | os.PathLike, split: str, batch_size: int = 64, with_phase: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of a split read in this process with pyarrow (no Ray), in file order."""
    fs, inner = storage.filesystem(split_dir(data_dir, split))
    dataset = pads.dataset(inner, format="parquet", filesystem=fs)
    for batch in dataset.to_batches(columns=columns(with_phase), batch_size=batch_size):
        yield to_tensors(pa.Table.from_batches([batch]))
