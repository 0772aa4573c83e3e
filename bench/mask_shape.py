"""Does reshaping a model's mask at inference trade speech for noise in STOI's favour?

A mask network trained with an over-suppression penalty keeps speech and leaves noise where
it is unsure (`bench/suppression.py`). Deeper suppression of the low mask values, after the
network, is the classical answer: the post-filter of PercepNet, CRUSE and DeepFilterNet,
g' = (1 + b) g / (1 + b / sin²(πg/2)), which leaves g = 1 alone and pushes small gains down,
or a plain power g' = g^p (a power below 1 suppresses less). Each mixture of a split is
rendered again from the dataset's manifest, the network runs once, and every shape is
scored on the same mask.

    python bench/mask_shape.py --data DATA --model FILE [--split val] [--out per_mixture.json]

Prints JSON: per shape, the mean PESQ, STOI and SI-SDR, and the paired difference from the
mask as is (mean ± standard error), overall and per SNR.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch

from speech_enhance.model import metrics
from speech_enhance.model.evaluate import paired_differences, stft_roundtrip
from speech_enhance.model.net import load_model, network_input, post_filter
from speech_enhance.pipeline import dsp
from speech_enhance.pipeline.dataset import load_manifest, render_row

METRICS = ("pesq", "stoi", "si_sdr")


SHAPES = {
    "identity": lambda g: g,
    **{f"postfilter_{b}": (lambda g, b=b: post_filter(g, b)) for b in (0.02, 0.05, 0.1)},
    **{f"power_{p}": (lambda g, p=p: g.pow(p)) for p in (0.8, 1.25, 1.5, 2.0)},
}


def run(description: str, outputs: Callable[[np.ndarray, torch.Tensor, torch.Tensor], dict[str, np.ndarray]],
        label: str) -> None:
    """The command line of this bench and `bench/pitch_filter.py`: each mixture of a split is
    rendered again, the network runs once, every output ``outputs(noisy, spec, mask)`` gives
    (one of them "identity", the mask as is) is scored, and the mean and the paired
    difference from "identity" are printed, one JSON line per output named ``label``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0, help="only the first N mixtures (0: all)")
    parser.add_argument("--out", help="write the per-mixture scores here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model)
    model.post_filter = 0.0  # every output starts from the raw mask, whatever the file saves
    rows = [r for r in load_manifest(args.data) if r["split"] == args.split]
    rows = rows[: args.limit] if args.limit else rows
    per_mixture = []
    for row in rows:
        mix = render_row(row)
        spec = dsp.stft(mix.noisy)
        with torch.no_grad():
            mask = model(network_input(model, spec[None]))[0, 0].float()
            outs = outputs(mix.noisy, spec, mask)
        reference = stft_roundtrip(mix.clean)
        scores = {"mixture_id": int(row["mixture_id"]), "snr_db": float(row["snr_db"])}
        for name, out in outs.items():
            scores.update({f"{name}.{m}": v for m, v in metrics.all_metrics(reference, out).items()})
        per_mixture.append(scores)
    print(json.dumps({"model": args.model, "split": args.split, "mixtures": len(per_mixture)}))
    by_snr = {snr: [r for r in per_mixture if r["snr_db"] == snr] for snr in sorted({r["snr_db"] for r in per_mixture})}
    for name in [k[: -len(".stoi")] for k in per_mixture[0] if k.endswith(".stoi")]:
        entry = {m: float(np.nanmean([r[f"{name}.{m}"] for r in per_mixture])) for m in METRICS}
        entry["minus_identity"] = paired_differences(per_mixture, per_mixture, name, "identity")
        entry["stoi_minus_identity_by_snr"] = {
            snr: paired_differences(rs, rs, name, "identity")["stoi"]["mean"] for snr, rs in by_snr.items()}
        print(json.dumps({label: name, **entry}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(per_mixture, f)


def main() -> None:
    run(__doc__.split("\n")[0],
        lambda noisy, spec, mask: {name: dsp.istft(spec * shape(mask), len(noisy)).numpy()
                                   for name, shape in SHAPES.items()}, "shape")


if __name__ == "__main__":
    main()
