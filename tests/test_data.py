"""Reading the dataset's splits through Ray Data for training."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from speech_enhance.model.data import join_patches, patch_batches, read_split, sequence_starts
from speech_enhance.pipeline import store


def _actor_classes() -> dict[str, str]:
    from ray.util.state import list_actors

    return {a.actor_id: a.class_name for a in list_actors(limit=10_000)}


@pytest.mark.timeout(120)
def test_every_epoch_reads_the_split_without_starting_actors(tiny_dataset, ray_session):
    dataset = read_split(tiny_dataset, "train", shuffle_files=True)
    before = _actor_classes()
    rows = []
    for _ in range(2):  # two epochs
        rows.append(sum(len(batch["noisy_mag"]) for batch in dataset.iter_batches(batch_size=16)))
    started = [name for actor, name in _actor_classes().items() if actor not in before]
    assert rows[0] == rows[1] > 0
    # Ray 2.60's default Parquet reader started two FooterReader actors (new worker
    # processes) for every execution.
    assert started == []


class _Tables:
    """Stands in for a Ray DataIterator: hands out Arrow batches of ``rows`` patches."""

    def __init__(self, total: int, dtype: str, rows: int = 10):
        self.total, self.dtype, self.rows = total, dtype, rows

    def iter_batches(self, batch_size: int, batch_format: str, prefetch_batches: int):
        assert batch_format == "pyarrow"
        for start in range(0, self.total, self.rows):
            ids = np.arange(start, min(start + self.rows, self.total))
            patches = np.broadcast_to(ids[:, None, None], (len(ids), 257, 64)).astype(self.dtype)
            yield store.to_arrow({"noisy_mag": patches, "clean_mag": -patches})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_patch_batches_deliver_every_patch_once_per_epoch_in_seeded_order(dtype):
    def ids(seed, shuffle):
        out = []
        for noisy, clean in patch_batches(_Tables(103, dtype), 16, shuffle_buffer=shuffle, seed=seed, read_batch=10):
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

    class Ordered(_Tables):
        def iter_batches(self, batch_size: int, batch_format: str, prefetch_batches: int):
            for table in super().iter_batches(batch_size, batch_format, prefetch_batches):
                ids = np.arange(self.served, self.served + table.num_rows)
                self.served += table.num_rows
                yield table.append_column("mixture_id", pa.array(ids // 5)).append_column(
                    "patch_index", pa.array(ids % 5, type=pa.int32()))

    tables = Ordered(40, "float32", rows=20)
    tables.served = 0
    seen = []
    for noisy, clean in patch_batches(tables, 3, sequence=2, read_batch=20):
        assert noisy.shape[1:] == (1, 257, 128)
        torch.testing.assert_close(clean, -noisy)
        first, second = noisy[:, 0, 0, 0].int(), noisy[:, 0, 0, 64].int()
        assert (second == first + 1).all() and (first // 5 == second // 5).all()  # one mixture, in order
        seen += first.tolist()
    # Eight mixtures of five patches: two pairs each (patches 0-1 and 2-3), patch 4 left out.
    assert sorted(seen) == [m * 5 + p for m in range(8) for p in (0, 2)]
