"""Does a mask's fine structure over frequency help intelligibility?

Voiced speech is a comb of harmonics 3-13 bins apart; between them, at low SNR, the bins
hold noise. A mask that follows the comb removes that noise; one that is smooth over
frequency cannot. For the ideal ratio mask min(|Clean| / |Noisy|, 1) and for each model's
mask, this scores the masked patches with STOI's intermediate measure (the loss's
:func:`~speech_enhance.model.losses.short_time_intelligibility`, 384 ms segments in
64-frame patches) as they are and with the mask averaged over ``--smooth`` neighbouring
bins. The difference is what the mask's fine structure is worth.

    python bench/fine_structure.py --data DATA --model FILE [FILE ...] [--split val] [--max-snr 0] [--patches 300]

Prints JSON: per mask, the measure as it is and smoothed, over the chosen patches.
"""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from speech_enhance.model.data import split_dir, to_tensors
from speech_enhance.model.losses import short_time_intelligibility
from speech_enhance.model.net import load_model, patch_input
from speech_enhance.pipeline import storage


def smooth(mask: torch.Tensor, bins: int) -> torch.Tensor:
    """``mask`` [batch, 1, bins, frames] averaged over ``bins`` neighbouring bins (fewer at the edges)."""
    return F.avg_pool2d(mask, (bins, 1), stride=1, padding=(bins // 2, 0), count_include_pad=False)


def scores(mask: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, bins: int) -> dict[str, float]:
    def measure(m: torch.Tensor) -> float:
        return float(short_time_intelligibility(m * noisy, clean).mean())
    return {"as_is": measure(mask), "smoothed": measure(smooth(mask, bins))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-snr", type=float, default=0.0, help="patches of mixtures at or below this SNR")
    parser.add_argument("--patches", type=int, default=300)
    parser.add_argument("--smooth", type=int, default=3, help="bins to average the mask over (odd)")
    args = parser.parse_args()
    if args.smooth < 1 or args.smooth % 2 == 0:  # an even window would shift the mask by half a bin
        parser.error(f"--smooth must be an odd number of bins ≥ 1, got {args.smooth}")
    torch.set_num_threads(1)
    tables, count = [], 0
    for path, _ in storage.list_files(split_dir(args.data, args.split), ".parquet"):  # same patches every run
        fs, inner = storage.filesystem(path)
        table = pq.read_table(inner, filesystem=fs, columns=["snr_db", "noisy_mag", "clean_mag", "noisy_phase"])
        tables.append(table.filter(pc.less_equal(table["snr_db"], args.max_snr)))
        count += tables[-1].num_rows
        if count >= args.patches:
            break
    noisy, clean, phase = (t[: args.patches] for t in to_tensors(pa.concat_tables(tables)))
    ideal = (clean / noisy.clamp_min(1e-8)).clamp(max=1)
    out = {"patches": len(noisy), "noisy": float(short_time_intelligibility(noisy, clean).mean()),
           "ideal_ratio_mask": scores(ideal, noisy, clean, args.smooth)}
    for path in args.model:
        model, _ = load_model(path)
        with torch.no_grad():
            out[path] = scores(model(patch_input(model, noisy, phase)), noisy, clean, args.smooth)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
