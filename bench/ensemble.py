"""Does averaging the masks of several trained models beat one of them?

Two trainings of one recipe differ by more than most options do (BENCHMARKS.md, "Run to
run"); averaging their masks is the usual way to spend that spread, at one network's
compute per model. This enhances every mixture of a split with the mean of the models'
masks at full strength and writes a report that `bench/compare.py` pairs with an
`evaluate` report of one of the models, mixture by mixture.

    python bench/ensemble.py --data DATA --model A.pth B.pth [...] --out DIR [--split test]
    python bench/compare.py REPORT_OF_A DIR

Writes DIR/metrics.json (``per_mixture``: the ``model.*`` scores of each mixture, as
`evaluate` writes them) and prints the mean PESQ, STOI and SI-SDR.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speech_enhance.model import metrics
from speech_enhance.model.enhance import enhance_array
from speech_enhance.model.evaluate import stft_roundtrip
from speech_enhance.model.net import load_model
from speech_enhance.pipeline.dataset import load_manifest, render_row


class MaskAverage(nn.Module):
    """The mean of several mask networks' masks (each sees the same noisy magnitudes, and
    the phase if it reads it)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.input_channels = max(m.input_channels for m in models)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(noisy[:, :m.input_channels]).float() for m in self.models]).mean(0)


_ensemble: MaskAverage | None = None


def score(paths: list[str], row: dict) -> dict:
    """One mixture's scores, enhanced by the ensemble of ``paths`` (loaded once per process)."""
    global _ensemble
    if _ensemble is None:
        torch.set_num_threads(1)
        _ensemble = MaskAverage([load_model(p)[0] for p in paths]).eval()
    mix = render_row(row)
    enhanced = enhance_array(_ensemble, np.asarray(mix.noisy, np.float32))
    scores = metrics.all_metrics(stft_roundtrip(mix.clean), enhanced)  # the reference evaluate scores against
    return {"mixture_id": int(row["mixture_id"]), "snr_db": float(row["snr_db"]),
            **{f"model.{k}": float(v) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a build folder")
    parser.add_argument("--model", nargs="+", required=True, help="model files whose masks are averaged")
    parser.add_argument("--out", required=True, help="folder for metrics.json")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    args = parser.parse_args()
    rows = [r for r in load_manifest(args.data) if r["split"] == args.split]
    if not rows:
        raise SystemExit(f"{args.data}: no {args.split} mixtures")
    with ProcessPoolExecutor(args.workers) as pool:
        per_mixture = list(pool.map(score, [args.model] * len(rows), rows, chunksize=4))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"models": args.model, "split": args.split,
                                                  "per_mixture": per_mixture}, indent=1))
    means = {m: np.mean([r[f"model.{m}"] for r in per_mixture]) for m in ("pesq", "stoi", "si_sdr")}
    print(f"{len(per_mixture)} mixtures: PESQ {means['pesq']:.3f}, STOI {means['stoi']:.4f}, "
          f"SI-SDR {means['si_sdr']:.2f} dB; wrote {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
