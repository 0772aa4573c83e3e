"""Where a denoiser's error comes from: the speech it removes and the noise it leaves.

Each mixture of a split is rendered again from the dataset's manifest, so its clean speech
and its noise are known apart. A method's effective gain per STFT bin, |Enhanced| / |Noisy|
(the mask itself for a model; measured on the output for RNNoise and the Wiener filter), is
applied to each, and three energy ratios are reported in dB, averaged over mixtures:

- ``speech_kept``: speech energy kept in the bins speech dominates (local SNR above 5 dB)
  of frames with speech (0 dB: all of it kept);
- ``noise_left_in_pauses``: noise energy left in the frames without speech (the clean
  frame 40 dB or more below the loudest);
- ``noise_left_under_speech``: noise energy left in the bins noise dominates (local SNR
  below -10 dB) of frames with speech.

    python bench/suppression.py --data DATA --model FILE [FILE ...] [--split val] [--every 2] [--max-snr 0]

Prints JSON: per method, the three ratios over the chosen mixtures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from speech_enhance.model import metrics
from speech_enhance.model.net import load_model, network_input
from speech_enhance.pipeline import dsp
from speech_enhance.pipeline.dataset import load_manifest, render_row

SPEECH_DB, NOISE_DB, PAUSE_DB = 5.0, -10.0, 40.0
FLOOR_DB = -60.0  # a method that outputs silence leaves "no" noise: counted as -60 dB


def _ratio_db(gain: torch.Tensor, signal: torch.Tensor, where: torch.Tensor) -> float:
    energy = signal[where].square().sum()
    if energy <= 0:
        return float("nan")
    kept = (gain[where] * signal[where]).square().sum()
    return max(FLOOR_DB, float(10 * torch.log10(kept / energy + 1e-30)))


def suppression(gain: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """The three ratios (dB) of one mixture: ``gain``, ``clean`` and ``noise`` are [bins, frames]
    magnitudes (the gain applied to the noisy STFT; the clean and noise STFTs)."""
    frame_energy = clean.square().sum(0)
    pause = (frame_energy < frame_energy.max() * 10 ** (-PAUSE_DB / 10))[None].expand_as(clean)
    local_snr = 20 * torch.log10((clean + 1e-8) / (noise + 1e-8))
    return {"speech_kept": _ratio_db(gain, clean, (local_snr > SPEECH_DB) & ~pause),
            "noise_left_in_pauses": _ratio_db(gain, noise, pause),
            "noise_left_under_speech": _ratio_db(gain, noise, (local_snr < NOISE_DB) & ~pause)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--every", type=int, default=1, help="use every n-th mixture of the split")
    parser.add_argument("--max-snr", type=float, default=None, help="only mixtures at or below this SNR (dB)")
    args = parser.parse_args()
    rows = [r for r in load_manifest(args.data) if r["split"] == args.split
            and (args.max_snr is None or r["snr_db"] <= args.max_snr)][::args.every]
    models = {path: load_model(path)[0] for path in args.model}
    outputs = {"wiener": metrics.wiener, **({"rnnoise": metrics.rnnoise} if metrics.rnnoise_available() else {})}
    results: dict[str, list[dict]] = {}
    for row in rows:
        mix = render_row(row)
        spec, clean_spec = dsp.stft(mix.noisy), dsp.stft(mix.clean)
        noisy, clean, noise = spec.abs(), clean_spec.abs(), (spec - clean_spec).abs()  # the STFT is linear
        gains = {}
        with torch.no_grad():
            for path, model in models.items():
                gains[path] = model(network_input(model, spec[None]))[0, 0]
        for name, method in outputs.items():
            gains[name] = (dsp.stft(method(mix.noisy)).abs() / (noisy + 1e-8)).clamp(max=2.0)
        for name, gain in gains.items():
            results.setdefault(name, []).append(suppression(gain, clean, noise))
    summary = {"data": args.data, "split": args.split, "mixtures": len(rows), "max_snr": args.max_snr}
    for name, values in results.items():
        summary[name] = {k: round(float(np.nanmean([v[k] for v in values])), 2) for k in values[0]}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
