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

from speech_enhance.pipeline import audio, augment, dsp, storage

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
@functools.lru_cache(maxsize=32)  # babble reads several utterances per mixture
def _cached_clean(path: str) -> np.ndarray:
    return audio.load_clean(path)


@functools.lru_cache(maxsize=64)
def _cached_noise(path: str) -> np.ndarray:
    return audio.load_audio(path)


@functools.lru_cache(maxsize=64)
def load_rir(path: str) -> np.ndarray:
    """A room impulse response file at 16 kHz, cut to its direct path (any format and rate)."""
    try:
        return augment.prepare_rir(audio.load_audio(path))
    except ValueError as err:
        raise audio.AudioError(path, str(err)) from None


def render_row(row: dict) -> dsp.Mixture:
    """Re-render one manifest row (a dict with the MixturePlan fields, and the
    :mod:`~speech_enhance.pipeline.augment` fields in a build with variety)."""
    clean = _cached_clean(row["clean_path"])
    if "noise_kind" not in row:  # a plain mixture
        return dsp.render_mixture(clean, _cached_noise(row["noise_path"]), float(row["snr_db"]),
                                  int(row["noise_offset"]), float(row["level_db"]))
    speech, target = augment.speech_and_target(clean, row, load_rir)
    noise = augment.noise_segment(row, len(clean), _cached_noise, _cached_clean)
    mic = list(row["mic_sos"])
    speech, target, noise = (augment.apply_sos(x, mic) for x in (speech, target, noise))
    return dsp.mix(speech, noise, float(row["snr_db"]), float(row["level_db"]), target, float(row["clip_level"]))


def load_manifest(data_dir: str | os.PathLike) -> list[dict]:
    """Manifest rows of a finished dataset."""
    return pq.read_table(storage.join(data_dir, "manifest.parquet")).to_pylist()


def patch_file_name(first_mixture_id: int) -> str:
    return f"part-{first_mixture_id:08d}.parquet"
