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

from speech_enhance.pipeline import augment, dsp, store
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
    # The final fit: the validation split's noise files also train; the test split's stay unseen.
    train_on_val_noise: bool = False
    speaker_regex: str | None = None  # None: the parent folder name is the speaker
    # Variety (pipeline/augment.py); all off by default, which keeps a build plain.
    snr_range: tuple[float, float] | None = None  # draw each mixture's SNR from [low, high] dB
    mixtures_per_clean: int | None = None  # K mixtures per utterance (random noise file, SNR, offset)
    rir_dir: str | list[str] | None = None  # folder(s) of room impulse responses
    rir_prob: float = 0.5  # fraction of mixtures reverberated with a file of rir_dir
    simulate_rooms: float = 0.0  # fraction reverberated with a simulated shoebox room
    reverb_target: str = "early"  # early: denoise only (keep 50 ms of reflections) | dry: also dereverberate
    mic_eq: float = 0.0  # fraction with a random microphone response
    clip: float = 0.0  # fraction clipped at a random fraction of their peak
    noise_transforms: float = 0.0  # fraction of train mixtures with noise EQ, modulation or a second noise
    synthetic_noise: float = 0.0  # fraction of train mixtures with babble or generated noise
    speech_gaps: float = 0.0  # fraction of train mixtures with spans of speech silenced
    noise_speed: float = 0.0  # fraction of recorded train noises played 0.5-2x as fast
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
        if self.snr_range is not None:
            low, high = (float(v) for v in self.snr_range)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"--snr-range takes LOW HIGH in dB with LOW <= HIGH, got {self.snr_range}")
        if self.train_on_val_noise and not self.split_noise:
            raise ValueError("--train-on-val-noise needs noise files split by file (drop --no-split-noise)")
        if self.mixtures_per_clean is not None and self.mixtures_per_clean < 1:
            raise ValueError(f"--mixtures-per-clean must be at least 1, got {self.mixtures_per_clean}")
        for option, value in (("--rir-prob", self.rir_prob), ("--simulate-rooms", self.simulate_rooms),
                              ("--mic-eq", self.mic_eq), ("--clip", self.clip),
                              ("--noise-transforms", self.noise_transforms),
                              ("--synthetic-noise", self.synthetic_noise), ("--speech-gaps", self.speech_gaps),
                              ("--noise-speed", self.noise_speed)):
            if not 0 <= value <= 1:
                raise ValueError(f"{option} is a fraction of mixtures in [0, 1], got {value:g}")
        if self.rir_dir is not None and self.simulate_rooms + self.rir_prob > 1 + 1e-9:
            raise ValueError(f"--rir-prob {self.rir_prob:g} + --simulate-rooms {self.simulate_rooms:g} exceed 1")
        if self.reverb_target not in augment.TARGETS:
            raise ValueError(f"--reverb-target must be one of {', '.join(augment.TARGETS)}, got {self.reverb_target!r}")
        if self.simulate_rooms > 0:
            try:
                import pyroomacoustics  # noqa: F401
            except ImportError:
                raise ValueError("--simulate-rooms needs pyroomacoustics: pip install 'speech-enhance[reverb]'") from None
        rir_folders = [("--rir", self.rir_dirs)] if self.rir_dir is not None else []
        for option, folders in (("--clean", self.clean_dirs), ("--noise", self.noise_dirs), *rir_folders):
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

    @property
    def rir_dirs(self) -> list[str]:
        return _folders(self.rir_dir) if self.rir_dir is not None else []

    def variety(self) -> augment.Variety:
        return augment.Variety(rir=self.rir_prob if self.rir_dir is not None else 0.0, rooms=self.simulate_rooms,
                               target=self.reverb_target, mic_eq=self.mic_eq, clip=self.clip,
                               noise_transforms=self.noise_transforms, synthetic_noise=self.synthetic_noise,
                               speech_gaps=self.speech_gaps, noise_speed=self.noise_speed)

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
            **self._variety_settings(),
        }

    def _variety_settings(self) -> dict:
        """The variety options in force; none in a plain build, whose dataset.json (and so
        its up-to-date check) stays what it was before these options existed."""
        out: dict = {}
        if self.snr_range is not None:
            out["snr_range"] = [float(v) for v in self.snr_range]
        if self.mixtures_per_clean is not None:
            out["mixtures_per_clean"] = self.mixtures_per_clean
        if self.train_on_val_noise:
            out["train_on_val_noise"] = True
        if self.rir_dir is not None:
            out["rir_dir"] = _resolved(self.rir_dir)
        variety = self.variety()
        if variety.enabled():
            out["variety"] = variety.to_dict()
        return out


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
