"""Where in frequency does a model gain or lose STOI against RNNoise?

STOI (Taal et al., 2011) is the mean, over 15 one-third-octave bands from 150 Hz and over
384 ms segments, of the correlation of the clean and processed band envelopes. This prints
that correlation band by band (its mean over bands is ``pystoi``'s STOI exactly), for the
noisy input, the model's full mask, RNNoise and the ideal ratio mask min(|S| / |X|, 1),
the best a magnitude mask can do. Each mixture of a split is rendered again from the
dataset's manifest; the reference goes through the STFT and iSTFT, as in ``evaluate``.

    python bench/stoi_bands.py --data DATA --model FILE [--split val] [--max-snr 0] [--limit N]

Prints JSON: the band centres in Hz, then per method the mean correlation per band and
its mean over bands (STOI), and the model minus RNNoise per band.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from pystoi import utils
from pystoi.stoi import BETA, DYN_RANGE, FS, MINFREQ, N_FRAME, NFFT, NUMBAND, OBM, N

from speech_enhance.model import metrics
from speech_enhance.model.net import load_model, network_input
from speech_enhance.pipeline import dsp
from speech_enhance.pipeline.dataset import load_manifest, render_row


def band_correlations(clean: np.ndarray, processed: np.ndarray) -> np.ndarray:
    """[15]: STOI's intermediate measure per one-third-octave band, averaged over segments
    (``pystoi.stoi`` step by step, stopping before the mean over bands)."""
    x, y = (utils.resample_oct(s, FS, dsp.SAMPLE_RATE) for s in (clean, processed))
    x, y = utils.remove_silent_frames(x, y, DYN_RANGE, N_FRAME, N_FRAME // 2)
    x_tob, y_tob = (np.sqrt(OBM @ np.abs(utils.stft(s, N_FRAME, NFFT, overlap=2).T) ** 2) for s in (x, y))
    segments = range(N, x_tob.shape[1] + 1)
    xs = np.array([x_tob[:, m - N:m] for m in segments])
    ys = np.array([y_tob[:, m - N:m] for m in segments])
    ys = ys * np.linalg.norm(xs, axis=2, keepdims=True) / (np.linalg.norm(ys, axis=2, keepdims=True) + utils.EPS)
    ys = np.minimum(ys, xs * (1 + 10 ** (-BETA / 20)))
    xs, ys = xs - xs.mean(2, keepdims=True), ys - ys.mean(2, keepdims=True)
    corr = (xs * ys).sum(2) / (np.linalg.norm(xs, axis=2) * np.linalg.norm(ys, axis=2) + utils.EPS)
    return corr.mean(0)


def add_row_options(parser: argparse.ArgumentParser) -> None:
    """--data, --split, --max-snr, --limit: which mixtures of a dataset to render again."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-snr", type=float, default=0.0, help="only mixtures at or below this SNR (dB)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N mixtures (0: all)")


def selected_rows(args: argparse.Namespace) -> list[dict]:
    """The manifest rows :func:`add_row_options` selects."""
    rows = [r for r in load_manifest(args.data) if r["split"] == args.split and r["snr_db"] <= args.max_snr]
    return rows[: args.limit] if args.limit else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_row_options(parser)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model)
    rows = selected_rows(args)
    bands: dict[str, list[np.ndarray]] = {}
    for row in rows:
        mix = render_row(row)
        spec, clean_spec = dsp.stft(mix.noisy), dsp.stft(mix.clean)
        with torch.no_grad():
            mask = model(network_input(model, spec[None]))[0, 0].float()
        ideal = (clean_spec.abs() / spec.abs().clamp_min(1e-9)).clamp(0, 1)
        outputs = {
            "noisy": dsp.istft(spec, len(mix.noisy)).numpy(),
            "model": dsp.istft(spec * mask, len(mix.noisy)).numpy(),
            **({"rnnoise": metrics.rnnoise(mix.noisy)} if metrics.rnnoise_available() else {}),
            "ideal_ratio_mask": dsp.istft(spec * ideal, len(mix.noisy)).numpy(),
        }
        reference = dsp.istft(clean_spec, len(mix.clean)).numpy()  # as evaluate's stft_roundtrip
        for name, out in outputs.items():
            bands.setdefault(name, []).append(band_correlations(reference, out))
    means = {name: np.mean(values, axis=0) for name, values in bands.items()}
    print(json.dumps({"model": args.model, "split": args.split, "max_snr": args.max_snr, "mixtures": len(rows),
                      "band_hz": [round(MINFREQ * 2 ** (j / 3)) for j in range(NUMBAND)]}))
    for name, m in means.items():
        print(json.dumps({"method": name, "stoi": round(float(m.mean()), 4), "bands": np.round(m, 3).tolist()}))
    if "rnnoise" in means:
        print(json.dumps({"model_minus_rnnoise": np.round(means["model"] - means["rnnoise"], 3).tolist()}))


if __name__ == "__main__":
    main()
