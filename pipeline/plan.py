"""Planning a dataset: splits by speaker and noise file, and the mixture manifest.

Pure Python/numpy; the driver runs it on file metadata only (no audio).

Splitting: whole speakers (and, by default, whole noise files) go to train, val or test,
never individual patches or mixtures, so no voice or noise recording leaks across
splits. Units are shuffled with the seed and allotted by the fractions, rounding down
and handing leftovers to the splits with the largest remainders. Every split with a
non-zero fraction first gets one unit if there are at least as many units as such
splits; with fewer units (a tiny corpus), the largest fractions are served first and
the rest stay empty, which ``dataset.json`` records as a warning. When noise files are
split but some non-empty split gets no noise file, that split shares all noise files,
also recorded as a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from speech_enhance.pipeline.dsp import LEVEL_RANGE_DB, n_patches, noise_offset_range

SPLITS = ("train", "val", "test")


def allot(units: list[str], fractions: tuple[float, float, float], seed: int, salt: int) -> dict[str, list[str]]:
    """Assign ``units`` (speakers or noise files) to the splits; see module doc."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    weights = np.asarray(fractions, dtype=float) / sum(fractions)
    order = [str(u) for u in np.random.default_rng([seed, salt]).permutation(sorted(units))]
    n = len(order)
    # Largest-remainder rounding of the fractions to whole units ...
    counts = np.floor(weights * n).astype(int)
    for i in np.argsort(-(weights * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # ... then one unit for every non-empty split, largest fractions first, while the
    # biggest split can spare one.
    for i in np.argsort(-weights, kind="stable"):
        if weights[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[np.argmax(counts)] -= 1
            counts[i] += 1
    out, start = {}, 0
    for i, split in enumerate(SPLITS):
        out[split] = sorted(order[start : start + counts[i]])
        start += counts[i]
    return out


@dataclass
class SourceFile:
    """A probed input file: path, speaker (clean only), length at 16 kHz."""

    path: str
    speaker: str
    n_samples: int


@dataclass
class MixturePlan:
    mixture_id: int
    split: str
    clean_path: str
    speaker: str
    noise_path: str
    noise_type: str
    snr_db: float
    noise_offset: int
    level_db: float
    seed: int
    n_samples: int
    n_patches: int


def plan_mixtures(
    clean: list[SourceFile],
    noise: list[SourceFile],
    snrs: list[float],
    fractions: tuple[float, float, float],
    seed: int,
    noises_per_clean: int | None = None,
    split_noise: bool = True,
) -> tuple[list[MixturePlan], dict[str, dict[str, list[str]]], list[str]]:
    """Every clean utterance of a split × its noise files × every SNR.

    Returns (mixtures, assignment {"speakers": {split: [...]}, "noise": {...}}, warnings).
    Each mixture's random choices (noise offset, output level) come from
    ``default_rng([seed, mixture_id])`` alone, so they do not depend on execution order.
    """
    warnings: list[str] = []
    speakers = allot(sorted({c.speaker for c in clean}), fractions, seed, salt=1)
    for split, frac in zip(SPLITS, fractions, strict=True):
        if frac > 0 and not speakers[split]:
            warnings.append(f"split {split!r} has no speaker: too few speakers for the fractions {fractions}")
    noise_paths = sorted(n.path for n in noise)
    if split_noise:
        noise_split = allot(noise_paths, fractions, seed, salt=2)
        for split in SPLITS:
            if speakers[split] and not noise_split[split]:
                warnings.append(f"split {split!r} has no noise file of its own: it shares all noise files")
                noise_split[split] = noise_paths
    else:
        noise_split = {split: noise_paths for split in SPLITS}
    noise_by_path = {n.path: n for n in noise}
    mixtures: list[MixturePlan] = []
    for split in SPLITS:
        split_speakers = set(speakers[split])
        utterances = sorted((c for c in clean if c.speaker in split_speakers), key=lambda c: c.path)
        for utt_index, utt in enumerate(utterances):
            choices = noise_split[split]
            if noises_per_clean is not None and noises_per_clean < len(choices):
                pick = np.random.default_rng([seed, 3, SPLITS.index(split), utt_index])
                choices = sorted(pick.choice(choices, size=noises_per_clean, replace=False).tolist())
            for noise_path in choices:
                nz = noise_by_path[noise_path]
                for snr in snrs:
                    mixture_id = len(mixtures)
                    rng = np.random.default_rng([seed, mixture_id])
                    mixtures.append(
                        MixturePlan(
                            mixture_id=mixture_id,
                            split=split,
                            clean_path=utt.path,
                            speaker=utt.speaker,
                            noise_path=noise_path,
                            noise_type=nz.speaker,
                            snr_db=float(snr),
                            noise_offset=int(rng.integers(0, noise_offset_range(nz.n_samples, utt.n_samples))),
                            level_db=float(rng.uniform(*LEVEL_RANGE_DB)),
                            seed=seed,
                            n_samples=utt.n_samples,
                            n_patches=n_patches(utt.n_samples),
                        )
                    )
    return mixtures, {"speakers": speakers, "noise": noise_split}, warnings


def as_rows(mixtures: list[MixturePlan]) -> list[dict]:
    return [asdict(m) for m in mixtures]
