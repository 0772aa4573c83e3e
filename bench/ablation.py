"""Architecture × loss ablation at an equal training-time budget: every row trains on the
same dataset for the same minutes (`train --time-limit`), keeps its best validation
checkpoint, and is scored by `evaluate` on the dataset's test split (unseen speakers and
noise recordings), at full strength and at the strength `enhance` applies by default.

    python bench/ablation.py --data DATA --out DIR [--minutes 4] [--workers 2]
        [--arch mask_cnn unet crn] [--loss mag_l1 cmag_mse cmag_mse_sisdr] [--rows ARCH:LOSS ...]

Writes DIR/ablation.json and prints a Markdown table. Re-running skips finished rows.
Parameters and MACs come from the model; RTF comes from `bench/rtf.py` (run alone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

METRICS = ("pesq", "stoi", "si_sdr")


def run_row(data: str, out: Path, arch: str, loss: str, minutes: float, workers: int, max_mixtures: int) -> dict:
    run, report = out / f"{arch}-{loss}", out / f"{arch}-{loss}-report"
    if not (report / "metrics.json").exists():
        subprocess.run(["speech-enhance", "train", "--data", data, "--out", str(run), "--arch", arch, "--loss", loss,
                        "--workers", str(workers), "--time-limit", str(minutes), "--epochs", "1000"], check=True)
        subprocess.run(["speech-enhance", "evaluate", "--data", data, "--model", str(run / "cnn_enhancer_best.pth"),
                        "--out", str(report), "--max-mixtures", str(max_mixtures), "--samples", "0"], check=True)
    results = json.loads((run / "results.json").read_text())
    history = (run / "history.csv").read_text().splitlines()[1:]
    metrics = json.loads((report / "metrics.json").read_text())
    overall = metrics["overall"]
    return {
        "arch": arch, "loss": loss, "parameters": results["model_size"]["parameters"],
        "macs_per_second": results["model_size"]["macs_per_second"],
        "epochs": len(history), "best_epoch": results["best_epoch"],
        "patches_per_s": sum(float(r.split(",")[5]) * float(r.split(",")[4]) for r in history)
        / sum(float(r.split(",")[4]) for r in history),
        "strength": metrics["limited_strength"]["strength"],
        "noisy": {m: overall["noisy"][m] for m in METRICS},
        "full": {m: overall["model"][m] for m in METRICS},
        "default": {m: overall["model_limited"][m] for m in METRICS},
        "rnnoise": {m: overall["rnnoise"][m] for m in METRICS},
        "test_mixtures": metrics["evaluated_mixtures"],
    }


def table(rows: list[dict]) -> str:
    head = ("| arch | loss | params | M MACs/s | patches/s | epochs | strength | PESQ full (Δ) | STOI full (Δ) "
            "| SI-SDR full (Δ) | PESQ default | STOI default | SI-SDR default |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        n, f, d = r["noisy"], r["full"], r["default"]
        lines.append(
            f"| {r['arch']} | {r['loss']} | {r['parameters'] / 1e6:.2f} M | {r['macs_per_second'] / 1e6:.0f} "
            f"| {r['patches_per_s']:.0f} | {r['epochs']} | {r['strength']:g} "
            f"| {f['pesq']:.2f} ({f['pesq'] - n['pesq']:+.2f}) | {f['stoi']:.3f} ({f['stoi'] - n['stoi']:+.3f}) "
            f"| {f['si_sdr']:.2f} ({f['si_sdr'] - n['si_sdr']:+.2f}) "
            f"| {d['pesq']:.2f} | {d['stoi']:.3f} | {d['si_sdr']:.2f} |")
    if rows:
        n, b = rows[0]["noisy"], rows[0]["rnnoise"]
        lines.append(f"| noisy input | | | | | | | {n['pesq']:.2f} | {n['stoi']:.3f} | {n['si_sdr']:.2f} | | | |")
        lines.append(f"| RNNoise | | | | | | | {b['pesq']:.2f} | {b['stoi']:.3f} | {b['si_sdr']:.2f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per row")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arch", nargs="+", default=["mask_cnn", "unet", "crn"])
    parser.add_argument("--loss", nargs="+", default=["mag_l1", "cmag_mse", "cmag_mse_sisdr"])
    parser.add_argument("--rows", nargs="+", default=None, metavar="ARCH:LOSS",
                        help="these rows instead of every --arch x --loss")
    parser.add_argument("--max-mixtures", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [r.split(":") for r in args.rows] if args.rows else [(a, lo) for a in args.arch for lo in args.loss]
    rows = []
    for arch, loss in pairs:
        rows.append(run_row(args.data, out, arch, loss, args.minutes, args.workers, args.max_mixtures))
        (out / "ablation.json").write_text(json.dumps({"minutes": args.minutes, "data": args.data,
                                                       "rows": rows}, indent=2))
        print(table(rows), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
