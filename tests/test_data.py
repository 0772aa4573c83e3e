"""Reading the dataset's splits for training: each worker's share of the row groups, batches."""

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from speech_enhance.model.data import (
    columns,
    join_patches,
    patch_batches,
    prefetched,
    sequence_starts,
    shard_tables,
    split_pieces,
)
from speech_enhance.pipeline import store


def _patch_files(folder, sizes, group=4):
    """Parquet files of patches numbered 0, 1, ... in file order, ``group`` rows per row group."""
    (folder / "train").mkdir(parents=True)
    start = 0
    for i, size in enumerate(sizes):
        ids = np.arange(start, start + size)
        patches = np.broadcast_to(ids[:, None, None], (size, 257, 64)).astype("float16")
        table = store.to_arrow({"noisy_mag": patches, "clean_mag": -patches}).append_column(
            "mixture_id", pa.array(ids))
        pq.write_table(table, folder / "train" / f"part-{i}.parquet", row_group_size=group)
        start += size
    return folder


def _ids(tables):
    return [int(v) for t in tables for v in store.decode_column(t, "noisy_mag")[:, 0, 0]]


def test_ranks_share_the_row_groups_equally_in_a_seeded_order(tmp_path):
    pieces = split_pieces(_patch_files(tmp_path, [10, 7, 9]), "train")  # 26 rows in 3 + 2 + 3 row groups
    assert [(p.rsplit("-", 1)[1], group) for p, _, group in pieces] == [
        ("0.parquet", 0), ("0.parquet", 1), ("0.parquet", 2), ("1.parquet", 0), ("1.parquet", 1),
        ("2.parquet", 0), ("2.parquet", 1), ("2.parquet", 2)]
    assert _ids(shard_tables(pieces, ["noisy_mag"])) == list(range(26))  # one rank, no seed: file order
    for seed in (None, 3):
        shares = [_ids(shard_tables(pieces, ["noisy_mag"], rank, 3, seed)) for rank in range(3)]
        assert [len(s) for s in shares] == [8, 8, 8]  # 26 // 3 each; two rows left out
        assert len(set(sum(shares, []))) == 24
    # Cut inside row groups: rank 1's run starts two rows into file 0's third group (rows 8, 9).
    assert _ids(shard_tables(pieces, ["noisy_mag"], 1, 3)) == list(range(8, 16))
    epoch = [_ids(shard_tables(pieces, ["noisy_mag"], 0, 1, seed)) for seed in (1, 1, 2)]
    assert epoch[0] == epoch[1] != epoch[2] and sorted(epoch[0]) == list(range(26))
    assert epoch[0] != list(range(26))
    table = next(shard_tables(pieces, columns(sequence=1)))
    assert table.column_names == ["noisy_mag", "clean_mag"]  # only the columns asked for


def test_prefetched_yields_in_order_raises_the_readers_error_and_stops_when_closed():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # as a time limit ends an epoch
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 2  # taken, queued, one in hand at the stop


def _tables(total: int, dtype: str, rows: int = 10):
    """Arrow tables of ``rows`` patches numbered 0 .. total - 1."""
    for start in range(0, total, rows):
        ids = np.arange(start, min(start + rows, total))
        patches = np.broadcast_to(ids[:, None, None], (len(ids), 257, 64)).astype(dtype)
        yield store.to_arrow({"noisy_mag": patches, "clean_mag": -patches})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_patch_batches_deliver_every_patch_once_per_epoch_in_seeded_order(dtype):
    def ids(seed, shuffle):
        out = []
        for noisy, clean in patch_batches(_tables(103, dtype), 16, shuffle_buffer=shuffle, seed=seed):
            assert noisy.dtype == torch.float32 and noisy.shape[1:] == (1, 257, 64)
            torch.testing.assert_close(clean, -noisy)
            out.append(noisy[:, 0, 0, 0].int().tolist())
        return out

    plain = ids(0, 0)
    assert [len(b) for b in plain] == [16] * 6 + [7]
    assert sum(plain, []) == list(range(103))  # no shuffle: file order
    shuffled = ids(1, 32)
    assert sorted(sum(shuffled, [])) == list(range(103)) and sum(shuffled, []) != list(range(103))
    assert shuffled == ids(1, 32) and shuffled != ids(2, 32)
    # A patch moves about a window from its place (a leftover may wait longer, as in Ray's buffer).
    assert np.mean([abs(p - i) for i, p in enumerate(sum(shuffled, []))]) < 32


def test_sequences_join_consecutive_patches_of_one_mixture_and_leave_the_rest_out():
    # Rows in file order: mixture 1 patches 0-4, mixture 2 patches 0-2, mixture 3 patches 5, 6, 8, 9
    # (7 missing): runs of two start at rows 0, 2 (mixture 1; patch 4 left over), 5 (mixture 2;
    # patch 2 left over), 8 and 10 (mixture 3, either side of the gap).
    mixture = np.array([1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    index = np.array([0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 8, 9])
    starts = sequence_starts(mixture, index, 2)
    assert starts.tolist() == [0, 2, 5, 8, 10]
    assert sequence_starts(mixture, index, 3).tolist() == [0, 5]
    patches = np.arange(12 * 2 * 3).reshape(12, 2, 3)  # 12 patches of 2 bins × 3 frames
    joined = join_patches(patches, starts, 2)
    assert joined.shape == (5, 2, 6)
    np.testing.assert_array_equal(joined[1], np.concatenate([patches[2], patches[3]], axis=1))  # along time

    def ordered(total, rows):
        for start, table in zip(range(0, total, rows), _tables(total, "float32", rows), strict=True):
            ids = np.arange(start, start + table.num_rows)
            yield table.append_column("mixture_id", pa.array(ids // 5)).append_column(
                "patch_index", pa.array(ids % 5, type=pa.int32()))

    seen = []
    for noisy, clean in patch_batches(ordered(40, 20), 3, sequence=2):
        assert noisy.shape[1:] == (1, 257, 128)
        torch.testing.assert_close(clean, -noisy)
        first, second = noisy[:, 0, 0, 0].int(), noisy[:, 0, 0, 64].int()
        assert (second == first + 1).all() and (first // 5 == second // 5).all()  # one mixture, in order
        seen += first.tolist()
    # Eight mixtures of five patches: two pairs each (patches 0-1 and 2-3), patch 4 left out.
    assert sorted(seen) == [m * 5 + p for m in range(8) for p in (0, 2)]
