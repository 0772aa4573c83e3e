"""Which errors of a magnitude mask cost STOI, PESQ and SI-SDR: leftover noise or removed speech?

Starts from the ideal ratio mask min(|S| / |X|, 1) of each mixture and spoils it one way at
a time: noise left everywhere (the mask floored at -20 or -10 dB), or speech removed (the
bins where speech dominates, mask > 0.5, lowered by 3, 6 or 10 dB), and also the
phase-sensitive mask |S| cos(ψ - φ) / |X| in [0, 1], what a loss against the clean phase
asks for. A loss weighs these errors; this measures what each costs the scores. Mixtures
are rendered again from the dataset's manifest; the reference goes through the STFT and
iSTFT, as in ``evaluate``.

    python bench/mask_errors.py --data DATA [--split val] [--max-snr 0] [--limit N]

Prints JSON: per variant the mean PESQ (wide-band), STOI and SI-SDR (dB) over the mixtures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from stoi_bands import add_row_options, selected_rows  # the sibling bench's choice of mixtures

from speech_enhance.model import metrics
from speech_enhance.pipeline import dsp
from speech_enhance.pipeline.dataset import render_row


def _noise_left(db: float):  # noqa: ANN202
    return lambda ideal: ideal.clamp_min(10 ** (db / 20))


def _speech_removed(db: float):  # noqa: ANN202
    return lambda ideal: torch.where(ideal > 0.5, ideal * 10 ** (-db / 20), ideal)


VARIANTS = {
    "ideal ratio mask": lambda ideal: ideal,
    **{f"noise left at {db} dB": _noise_left(db) for db in (-20, -10)},
    **{f"speech removed {db} dB": _speech_removed(db) for db in (3, 6, 10)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_row_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = selected_rows(args)
    scores: dict[str, list[dict]] = {}
    for row in rows:
        mix = render_row(row)
        spec, clean_spec = dsp.stft(mix.noisy), dsp.stft(mix.clean)
        magnitude = spec.abs().clamp_min(1e-9)
        ideal = (clean_spec.abs() / magnitude).clamp(0, 1)
        masks = {name: spoil(ideal) for name, spoil in VARIANTS.items()}
        masks["phase-sensitive mask"] = (clean_spec.abs() * torch.cos(clean_spec.angle() - spec.angle())
                                         / magnitude).clamp(0, 1)
        reference = dsp.istft(clean_spec, len(mix.clean)).numpy()  # as evaluate's stft_roundtrip
        for name, mask in {"noisy": torch.ones_like(ideal), **masks}.items():
            scores.setdefault(name, []).append(
                metrics.all_metrics(reference, dsp.istft(spec * mask, len(mix.noisy)).numpy()))
    print(json.dumps({"data": args.data, "split": args.split, "max_snr": args.max_snr, "mixtures": len(rows)}))
    for name, values in scores.items():
        print(json.dumps({"variant": name, **{k: round(float(np.mean([v[k] for v in values])), 4)
                                              for k in values[0]}}))


if __name__ == "__main__":
    main()
