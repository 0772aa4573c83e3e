"""The dataset on disk: what `build` writes and what training and evaluation read.

::

    DATA/dataset.json        config, versions, counts, skipped inputs, "complete" last
    DATA/manifest.parquet    one row per mixture, enough to re-render it exactly
    DATA/{train,val,test}/   one row per 64-frame patch (:mod:`speech_enhance.pipeline.store`)

Readers need only this module, not the Ray build that writes it.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow.parquet as pq

from speech_enhance.pipeline import audio, dsp, storage

FORMAT_VERSION = 1


class DatasetError(RuntimeError):
    """A dataset that cannot be used (or built); the message says why and what to do."""


def read_dataset_info(data_dir: str | os.PathLike) -> dict:
    """dataset.json of a finished build, or :class:`DatasetError` saying what is wrong."""
    path = storage.join(data_dir, "dataset.json")
    if not storage.is_file(path):
        raise DatasetError(f"{data_dir}: no dataset.json - not a dataset built by `speech-enhance build`")
    info = storage.read_json(path)
    if not info.get("complete"):
        raise DatasetError(f"{data_dir}: the build did not finish (dataset.json says incomplete); rebuild with --overwrite")
    return info


# Loaded audio is cached per worker process: Ray reuses worker processes across tasks,
# and consecutive mixtures share their clean file and draw from few noise files.
@functools.lru_cache(maxsize=8)
def _cached_clean(path: str) -> np.ndarray:
    return audio.load_clean(path)


@functools.lru_cache(maxsize=64)
def _cached_noise(path: str) -> np.ndarray:
    return audio.load_audio(path)


def render_row(row: dict) -> dsp.Mixture:
    """Re-render one manifest row (a dict with the MixturePlan fields)."""
    return dsp.render_mixture(
        _cached_clean(row["clean_path"]),
        _cached_noise(row["noise_path"]),
        float(row["snr_db"]),
        int(row["noise_offset"]),
        float(row["level_db"]),
    )


def load_manifest(data_dir: str | os.PathLike) -> list[dict]:
    """Manifest rows of a finished dataset."""
    return pq.read_table(storage.join(data_dir, "manifest.parquet")).to_pylist()


def patch_file_name(first_mixture_id: int) -> str:
    return f"part-{first_mixture_id:08d}.parquet"
