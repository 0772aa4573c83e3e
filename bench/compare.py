"""Is one model better than another on the same mixtures? Paired differences between reports.

Two models evaluated on the same split differ by a few hundredths of PESQ or STOI, while
mixtures differ from one another by far more; comparing each mixture with itself shows
whether a difference is more than noise. Each report is an `evaluate --out` folder (its
metrics.json); the first is the base, each other one is compared with it mixture by mixture.
With one report, its model is compared with a baseline it holds (`--base-method rnnoise`).

    python bench/compare.py BASE_REPORT [REPORT ...] [--method model] [--base-method model]

Prints a Markdown table: per report, the mean difference ± its standard error for PESQ,
STOI and SI-SDR, over the mixtures both reports hold. The standard error covers the choice
of mixtures, not the training run: two trainings from other seeds differ by more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speech_enhance.model.evaluate import METHODS, paired_differences


def per_mixture(report: str) -> list[dict]:
    path = Path(report) / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{report}: no metrics.json (an `evaluate --out` folder is expected)")
    return json.loads(path.read_text())["per_mixture"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", help="evaluate --out folders; the first is the base")
    parser.add_argument("--method", default="model", choices=METHODS)
    parser.add_argument("--base-method", default="model", choices=METHODS)
    args = parser.parse_args()
    base = per_mixture(args.reports[0])
    others = args.reports[1:] or args.reports[:1]
    print(f"{args.method} minus {args.base_method} of {args.reports[0]}, mean ± standard error\n")
    print("| report | mixtures | PESQ | STOI | SI-SDR dB |\n|---|---|---|---|---|")
    for report in others:
        diff = paired_differences(per_mixture(report), base, args.method, args.base_method)
        cells = [f"{diff[m]['mean']:+.{p}f} ± {diff[m]['se']:.{p}f}" for m, p in (("pesq", 3), ("stoi", 4), ("si_sdr", 2))]
        print(f"| {report} | {diff['pesq']['n']} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
