"""Real-time factor of the mask CNN on CPU, one thread: seconds of compute per second
of audio, for `enhance_array` on a 60 s signal (STFT, network, iSTFT).

    python bench/rtf.py [--widths 32,64,64,32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from speech_enhance.model.enhance import enhance_array
from speech_enhance.model.net import build_model
from speech_enhance.pipeline import allocator


def main():
    # As `speech-enhance enhance` does (speech_enhance.pipeline.allocator).
    allocator.keep_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="32,64,64,32")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model("mask_cnn", [int(w) for w in args.widths.split(",")]).eval()
    x = (0.1 * np.random.default_rng(0).standard_normal(int(args.seconds * 16000))).astype(np.float32)
    enhance_array(model, x[:16000])  # warm-up
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        enhance_array(model, x)
        runs.append((time.perf_counter() - started) / args.seconds)
    print(json.dumps({"machine": f"{os.cpu_count()} CPUs", "threads": 1, "widths": args.widths,
                      "audio_seconds": args.seconds, "rtf_runs": runs, "rtf_best": min(runs)}, indent=2))


if __name__ == "__main__":
    main()
