"""Shared fixtures: one local Ray for the whole session, tiny synthetic audio corpora."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) for the whole session, with a bucket.

    Its endpoint and dummy credentials go into the environment before Ray starts,
    so Ray's workers (and pyarrow in them) reach it through plain ``s3://`` URIs,
    exactly as on AWS with real credentials."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket="speech-enhance-test")
    yield "s3://speech-enhance-test"
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray instance (2 CPUs) shared by every test that needs Ray. It starts
    after the S3 server so that its workers see the endpoint. tests/test_multinode.py
    swaps in a multi-node cluster for its module and restores this one afterwards."""
    import ray

    from speech_enhance.pipeline.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def speech_like(rng: np.random.Generator, seconds: float, rate: int, f0: float) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal: cheap stand-in for speech."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None)
    return (0.3 * voiced * syllables / 3.0).astype(np.float32)


def make_tiny_corpus(root: Path, speakers: int = 4, files_per_speaker: int = 2, noises: int = 3,
                     seconds: float = 1.2) -> tuple[Path, Path]:
    """speech/<spk>/*.wav at mixed rates and channel counts, noise/<type>/*.wav."""
    rng = np.random.default_rng(0)
    clean_dir, noise_dir = root / "speech", root / "noise"
    rates = [16000, 22050, 44100, 48000]
    for s in range(speakers):
        for k in range(files_per_speaker):
            rate = rates[(s + k) % len(rates)]
            x = speech_like(rng, seconds + 0.1 * k, rate, 100 + 30 * s)
            if s % 2:  # some stereo files
                x = np.stack([x, 0.8 * x], axis=1)
            path = clean_dir / f"spk{s}" / f"utt{k}.{'flac' if k % 2 else 'wav'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, x, rate)
    for n in range(noises):
        path = noise_dir / f"type{n}" / f"noise{n}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (0.7 + n)))).astype(np.float32), 16000)
    return clean_dir, noise_dir


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def build_tiny_dataset(clean: Path, noise: Path, out: Path) -> Path:
    """The training tests' dataset: the tiny corpus at 2 SNRs (Ray must be running)."""
    from speech_enhance.pipeline.build import BuildConfig, build_dataset

    build_dataset(BuildConfig(str(clean), str(noise), str(out), snrs=[5.0, -5.0]), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(ray_session, tiny_corpus, tmp_path_factory) -> Path:
    """A built dataset from the tiny corpus, shared by training tests."""
    clean, noise = tiny_corpus
    return build_tiny_dataset(clean, noise, tmp_path_factory.mktemp("tiny_dataset") / "data")
