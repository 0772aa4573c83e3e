"""Reading the dataset's splits through Ray Data for training."""

import pytest

from speech_enhance.model.data import read_split


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
