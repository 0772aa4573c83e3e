"""A multi-node Ray cluster on one machine (ray.cluster_utils.Cluster: a head and two
worker nodes, each its own raylet with 1 CPU): build spreads its file jobs over the
nodes and survives losing a node; train --workers 2 puts its workers on two nodes.
Local paths stand in for shared storage here, as every node is on this machine."""

import json
import threading
import time

import pyarrow.dataset as pads
import pytest

from speech_enhance.cli import main
from speech_enhance.pipeline import build, dataset
from speech_enhance.pipeline.cluster import init_ray

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(ray_session):
    from ray.cluster_utils import Cluster

    ray_session.shutdown()  # this module runs on its own cluster ...
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray_session.init(address=cluster.address)
    yield cluster, workers
    ray_session.shutdown()
    cluster.shutdown()
    init_ray(num_cpus=2)  # ... and gives the other tests their local Ray back


def _build_args(clean, noise, out, *extra: str) -> list[str]:
    return ["build", "--clean", str(clean), "--noise", str(noise), "--out", str(out), "--snr", "5", "-5",
            "--rows-per-file", "8", "--address", "auto", *extra]


def _rows(out) -> dict:
    return {split: pads.dataset(str(out / split), format="parquet").to_table().sort_by(
        [("mixture_id", "ascending"), ("patch_index", "ascending")]) for split in ("train", "val", "test")}


def test_build_spreads_over_nodes_and_train_uses_two_nodes(cluster, tiny_corpus, tmp_path):
    clean, noise = tiny_corpus
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(_build_args(clean, noise, data)) == 0
    info = dataset.read_dataset_info(data)
    assert len(info["mixtures_per_node"]) >= 2
    assert main(["train", "--data", str(data), "--out", str(run), "--workers", "2", "--epochs", "1",
                 "--batch-size", "4", "--address", "auto"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert len(results["worker_nodes"]) == 2 and len(set(results["worker_nodes"])) == 2


def test_build_survives_losing_a_node(cluster, tiny_corpus, tmp_path):
    """A worker node is removed while its file jobs run; Ray retries them elsewhere and
    the dataset equals a build that lost nothing."""
    head_cluster, workers = cluster
    clean, noise = tiny_corpus
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    assert main(_build_args(clean, noise, reference)) == 0
    codes = []
    cfg = build.BuildConfig(str(clean), str(noise), str(faulty), snrs=[5.0, -5.0], rows_per_file=2,
                            fault_injection={"delay_s": 2.0})
    thread = threading.Thread(target=lambda: codes.append(build.build_dataset(cfg, log=lambda *_: None)))
    thread.start()
    deadline = time.time() + 120
    while not any(faulty.glob("*/part-*.parquet")):
        assert thread.is_alive() and time.time() < deadline
        time.sleep(0.1)
    head_cluster.remove_node(workers[-1])  # jobs still running there are lost with it
    thread.join(timeout=300)
    assert codes and codes[0]["complete"]
    ours, theirs = _rows(faulty), _rows(reference)
    for split in ours:
        assert ours[split].equals(theirs[split])
