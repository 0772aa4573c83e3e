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

from dataclasses import asdict, dataclass, field

import numpy as np

from speech_enhance.pipeline import augment
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
    variety: dict = field(default_factory=dict)  # augment.draw's fields; empty in a plain build


def _allot_files(paths: list[str], fractions: tuple[float, float, float], seed: int, salt: int, what: str,
                 speakers: dict[str, list[str]], warnings: list[str]) -> dict[str, list[str]]:
    """Files (noise, RIRs) split like speakers; a split with speakers but no file of its
    own shares them all (recorded as a warning)."""
    out = allot(paths, fractions, seed, salt)
    for split in SPLITS:
        if speakers[split] and not out[split]:
            warnings.append(f"split {split!r} has no {what} file of its own: it shares all {what} files")
            out[split] = paths
    return out


def _variants(utt_rng: np.random.Generator, choices: list[str], snrs: list[float], snr_range: tuple | None,
              mixtures_per_clean: int | None) -> list[tuple[str, float | None]]:
    """(noise file, SNR or None: drawn per mixture from ``snr_range``) of one utterance's mixtures."""
    if mixtures_per_clean:
        picks = utt_rng.integers(len(choices), size=mixtures_per_clean)
        if snr_range:
            return [(choices[i], None) for i in picks]
        return [(choices[i], float(snrs[j])) for i, j in zip(picks, utt_rng.integers(len(snrs), size=len(picks)),
                                                               strict=True)]
    if snr_range:
        return [(path, None) for path in choices]
    return [(path, float(snr)) for path in choices for snr in snrs]


def plan_mixtures(
    clean: list[SourceFile],
    noise: list[SourceFile],
    snrs: list[float],
    fractions: tuple[float, float, float],
    seed: int,
    noises_per_clean: int | None = None,
    split_noise: bool = True,
    snr_range: tuple[float, float] | None = None,
    mixtures_per_clean: int | None = None,
    variety: augment.Variety | None = None,
    rirs: list[SourceFile] | None = None,
    train_on_val_noise: bool = False,
) -> tuple[list[MixturePlan], dict[str, dict[str, list[str]]], list[str]]:
    """Every clean utterance of a split × its noise files × every SNR; or, with
    ``mixtures_per_clean`` K, K mixtures per utterance, each with a noise file of the
    split drawn at random; with ``snr_range`` each mixture draws its SNR uniformly from
    it instead of taking every SNR of ``snrs``.

    ``train_on_val_noise`` (the final fit, once a recipe is chosen on validation) adds the
    validation split's noise files to training's; validation and test mixtures stay what
    they are, and the test split's noise stays unseen.

    Returns (mixtures, assignment {"speakers": {split: [...]}, "noise": {...}[, "rir"]},
    warnings). Each mixture's random choices (noise offset, output level, SNR, variety)
    come from generators seeded by ``[seed, mixture_id]`` alone, so they do not depend
    on execution order.
    """
    warnings: list[str] = []
    speakers = allot(sorted({c.speaker for c in clean}), fractions, seed, salt=1)
    for split, frac in zip(SPLITS, fractions, strict=True):
        if frac > 0 and not speakers[split]:
            warnings.append(f"split {split!r} has no speaker: too few speakers for the fractions {fractions}")
    noise_paths = sorted(n.path for n in noise)
    if split_noise:
        noise_split = _allot_files(noise_paths, fractions, seed, 2, "noise", speakers, warnings)
        if train_on_val_noise:  # a validation split that shares every file must not bring test's in
            heard = set(noise_split["val"]) - set(noise_split["test"])
            noise_split["train"] = sorted(set(noise_split["train"]) | heard)
    else:
        noise_split = {split: noise_paths for split in SPLITS}
    assignment = {"speakers": speakers, "noise": noise_split}
    if rirs:
        assignment["rir"] = _allot_files(sorted(r.path for r in rirs), fractions, seed, 4, "RIR", speakers, warnings)
    noise_by_path = {n.path: n for n in noise}
    mixtures: list[MixturePlan] = []
    for split in SPLITS:
        split_speakers = set(speakers[split])
        utterances = sorted((c for c in clean if c.speaker in split_speakers), key=lambda c: c.path)
        split_noises = [noise_by_path[p] for p in noise_split[split]]
        split_rirs = assignment.get("rir", {}).get(split, [])
        for utt_index, utt in enumerate(utterances):
            choices = noise_split[split]
            utt_rng = np.random.default_rng([seed, 3, SPLITS.index(split), utt_index])
            if not mixtures_per_clean and noises_per_clean is not None and noises_per_clean < len(choices):
                choices = sorted(utt_rng.choice(choices, size=noises_per_clean, replace=False).tolist())
            for noise_path, snr in _variants(utt_rng, choices, snrs, snr_range, mixtures_per_clean):
                nz = noise_by_path[noise_path]
                mixture_id = len(mixtures)
                rng = np.random.default_rng([seed, mixture_id])
                plan = MixturePlan(
                    mixture_id=mixture_id,
                    split=split,
                    clean_path=utt.path,
                    speaker=utt.speaker,
                    noise_path=noise_path,
                    noise_type=nz.speaker,
                    snr_db=snr if snr is not None else 0.0,
                    noise_offset=int(rng.integers(0, noise_offset_range(nz.n_samples, utt.n_samples))),
                    level_db=float(rng.uniform(*LEVEL_RANGE_DB)),
                    seed=seed,
                    n_samples=utt.n_samples,
                    n_patches=n_patches(utt.n_samples),
                )
                # Draws beyond the plain ones use generators of their own, so a plain build's
                # mixtures stay what they always were.
                if snr is None:
                    plan.snr_db = float(np.random.default_rng([seed, mixture_id, 1]).uniform(*snr_range))
                if variety is not None and variety.enabled():
                    plan.variety = augment.draw(
                        np.random.default_rng([seed, mixture_id, 2]), variety, split, utt.n_samples, utt.speaker,
                        split_noises, split_rirs, utterances)
                    plan.noise_type = augment.noise_type(plan.variety, nz.speaker)
                mixtures.append(plan)
    return mixtures, assignment, warnings


def as_rows(mixtures: list[MixturePlan]) -> list[dict]:
    """Manifest rows: the plan's fields, with the variety fields as columns of their own."""
    rows = []
    for m in mixtures:
        row = asdict(m)
        row.update(row.pop("variety"))
        rows.append(row)
    return rows
