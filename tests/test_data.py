"""Reading the dataset's splits through Ray Data for training."""

import numpy as np
import pytest
import torch

from speech_enhance.model.data import patch_batches, read_split
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
