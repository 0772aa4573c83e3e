"""Does a model enhance a quiet or a loud recording as well as one at the training level?

Training mixtures are drawn at -35 to -15 dBFS; recordings come at any level. This scales
every mixture of a split by each gain, enhances it with each model (and RNNoise), scales the
output back and scores it against the clean reference, so every row sees the same sound and
only the level differs. ``--set NAME=VALUE`` runs the models with a constructor option
changed (same weights), e.g. ``level_db=-20`` on a model trained without it. RNNoise takes
16-bit samples, so a gain that lifts peaks past full scale clips its input.

    python bench/level.py --data DATA --model M.pth [...] [--split test] [--gains-db 0 -30 10]
        [--set level_db=-20] [--rnnoise] [--out FILE]

Prints one JSON object: per method and gain, the mean PESQ, STOI and SI-SDR, and the
mixture count; ``--out`` also writes the per-mixture scores.
"""

from __future__ import annotations

import argparse
import functools
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import nn

from speech_enhance.model import metrics
from speech_enhance.model.enhance import enhance_array
from speech_enhance.model.evaluate import stft_roundtrip
from speech_enhance.model.net import build_model, load_model, model_config
from speech_enhance.pipeline.dataset import load_manifest, render_row

MEASURES = ("pesq", "stoi", "si_sdr")
_models: dict[str, nn.Module] = {}


def with_options(path: str, options: dict[str, float]) -> nn.Module:
    """The model of ``path`` rebuilt with ``options`` changed, its weights kept."""
    model, _ = load_model(path)
    if not options:
        return model.eval()
    config = model_config(model)
    rebuilt = build_model(config.pop("arch"), **{**config, **options})
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()


def score(paths: list[str], options: dict[str, float], gains_db: list[float], with_rnnoise: bool, row: dict) -> dict:
    """One mixture's scores per method and gain (models loaded once per process)."""
    if not _models:
        torch.set_num_threads(1)
        _models.update({p: with_options(p, options) for p in paths})
    mix = render_row(row)
    reference, noisy = stft_roundtrip(mix.clean), np.asarray(mix.noisy, np.float32)
    out = {"mixture_id": int(row["mixture_id"]), "snr_db": float(row["snr_db"])}
    methods = {p: (lambda x, m=_models[p]: enhance_array(m, x)) for p in paths}
    if with_rnnoise:
        methods["rnnoise"] = metrics.rnnoise
    for gain_db in gains_db:
        gain = 10.0 ** (gain_db / 20.0)
        for name, method in methods.items():
            with torch.inference_mode():
                enhanced = method(noisy * gain) / gain
            for measure, value in metrics.all_metrics(reference, enhanced).items():
                out[f"{name}@{gain_db:g}.{measure}"] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a build folder")
    parser.add_argument("--model", nargs="+", required=True, help="model files")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--gains-db", nargs="+", type=float, default=[0.0, -30.0, 10.0],
                        help="input gains in dB (0: the build's level)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a model constructor option to change, e.g. level_db=-20")
    parser.add_argument("--rnnoise", action="store_true", help="score RNNoise too (the rnnoise extra)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--out", help="write the per-mixture scores to this JSON file")
    args = parser.parse_args()
    options = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE")
        options[name] = float(value)
    if args.rnnoise and not metrics.rnnoise_available():
        raise SystemExit("--rnnoise: the rnnoise extra is not installed (pip install 'speech-enhance[rnnoise]')")
    for path in args.model:  # a bad option or file fails here, not in every worker
        try:
            with_options(path, options)
        except OSError as err:  # it names the file
            raise SystemExit(str(err)) from None
        except ValueError as err:
            raise SystemExit(f"{path}: {err}") from None
    rows = [r for r in load_manifest(args.data) if r["split"] == args.split]
    if not rows:
        raise SystemExit(f"{args.data}: no {args.split} mixtures")
    with ProcessPoolExecutor(args.workers) as pool:
        job = functools.partial(score, args.model, options, args.gains_db, args.rnnoise)
        per_mixture = list(pool.map(job, rows, chunksize=4))
    names = [*args.model, *(["rnnoise"] if args.rnnoise else [])]
    summary = {"split": args.split, "mixtures": len(rows), "set": options,
               "means": {f"{name}@{g:g}": {m: round(float(np.mean([r[f"{name}@{g:g}.{m}"] for r in per_mixture])), 4)
                                           for m in MEASURES} for name in names for g in args.gains_db}}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**summary, "per_mixture": per_mixture}, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
