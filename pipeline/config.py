"""The dataset build's settings: every option with its default, checked before Ray starts.

Kept apart from the Ray build (:mod:`speech_enhance.pipeline.build`) so that the command
line reads defaults and help from here without importing Ray.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speech_enhance.pipeline import dsp, store
from speech_enhance.pipeline.dataset import FORMAT_VERSION

PATCH_TENSORS = store.TENSOR_COLUMNS
DEFAULT_FILE_BYTES = 128 * 2**20


@dataclass
class BuildConfig:
    """Every build setting, with its default: the one place the CLI takes them from."""

    clean_dir: str | list[str]  # one folder, or several (corpora combined; speakers named folder/speaker)
    noise_dir: str | list[str]
    out_dir: str
    snrs: list[float] = field(default_factory=lambda: [10.0, 5.0, 0.0, -5.0])  # SNRs in dB
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test fractions of speakers (and noises)
    seed: int = 0
    noises_per_clean: int | None = None  # None: every noise file of the split
    rows_per_file: int | None = None  # None: about 128 MiB per file
    dtype: str = "float32"  # float32 | float16
    split_noise: bool = True  # False: noise files are shared between the splits
    speaker_regex: str | None = None  # None: the parent folder name is the speaker
    # Test hook, not part of the dataset config (also read from the environment variable
    # SPEECH_ENHANCE_FAULT_INJECTION as JSON): {"marker": path} makes the first file
    # job's worker process die once, before it writes, to exercise Ray's task retries;
    # {"delay_s": s} makes every file job take s seconds longer, so tests can interrupt
    # a build or remove a node while it runs.
    fault_injection: dict | None = None

    def validate(self) -> None:
        """ValueError naming the option that is wrong, before any Ray work starts."""
        split = [float(f) for f in self.split]
        if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"--split takes three non-negative fractions (train val test) that sum to 1, "
                             f"got {' '.join(f'{f:g}' for f in split)}")
        if not self.snrs or not all(math.isfinite(float(s)) for s in self.snrs):
            raise ValueError(f"--snr takes one or more finite SNRs in dB, got {self.snrs}")
        if self.noises_per_clean is not None and self.noises_per_clean < 1:
            raise ValueError(f"--noises-per-clean must be 'all' or at least 1, got {self.noises_per_clean}")
        if self.rows_per_file is not None and self.rows_per_file < 1:
            raise ValueError(f"--rows-per-file must be at least 1, got {self.rows_per_file}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"--dtype must be float32 or float16, got {self.dtype!r}")
        if self.speaker_regex is not None:
            try:
                re.compile(self.speaker_regex)
            except re.error as err:
                raise ValueError(f"--speaker-regex {self.speaker_regex!r} is not a regular expression: {err}") from None
        for option, folders in (("--clean", self.clean_dirs), ("--noise", self.noise_dirs)):
            if not folders:
                raise ValueError(f"{option} needs at least one folder")
            for folder in folders:
                if not Path(folder).is_dir():
                    raise ValueError(f"{option} {folder}: no such folder")
            if len({str(Path(f).resolve()) for f in folders}) < len(folders):
                raise ValueError(f"{option}: the same folder is given twice")

    @property
    def clean_dirs(self) -> list[str]:
        return _folders(self.clean_dir)

    @property
    def noise_dirs(self) -> list[str]:
        return _folders(self.noise_dir)

    def effective(self) -> dict:
        """The config as recorded in dataset.json (paths resolved, defaults filled)."""
        return {
            "clean_dir": _resolved(self.clean_dir),
            "noise_dir": _resolved(self.noise_dir),
            "snrs": [float(s) for s in self.snrs],
            "split": [float(f) for f in self.split],
            "seed": self.seed,
            "noises_per_clean": self.noises_per_clean,
            "rows_per_file": self.rows_per_file or default_rows_per_file(self.dtype),
            "dtype": self.dtype,
            "split_noise": self.split_noise,
            "speaker_regex": self.speaker_regex,
            "sample_rate": dsp.SAMPLE_RATE,
            "n_fft": dsp.N_FFT,
            "hop": dsp.HOP,
            "patch_frames": dsp.PATCH_FRAMES,
            "format_version": FORMAT_VERSION,
        }


def default_rows_per_file(dtype: str) -> int:
    row_bytes = len(PATCH_TENSORS) * dsp.N_BINS * dsp.PATCH_FRAMES * np.dtype(dtype).itemsize
    return max(1, DEFAULT_FILE_BYTES // row_bytes)


def _folders(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _resolved(value: str | list[str]) -> str | list[str]:
    """Absolute folder(s) as dataset.json records them: one folder stays a string, as
    datasets of one folder always recorded it."""
    folders = [str(Path(f).resolve()) for f in _folders(value)]
    return folders[0] if len(folders) == 1 else folders
