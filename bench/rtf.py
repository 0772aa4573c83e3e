"""Real-time factor on CPU, one thread: seconds of compute per second of audio, for
`enhance_array` on a 60 s signal (STFT, network, iSTFT), for each registered architecture
at its default size (or the ones named), with its parameters and MACs per second; with
PyTorch and, where onnxruntime is installed, with the network exported to ONNX and run by
ONNX Runtime on one thread (`enhance --backend onnx`). ``--model`` times a model file
instead (the shipped one: ``--model speech_enhance/pretrained/crn_v9.pth``).

    python bench/rtf.py [--arch mask_cnn crn ...] [--model FILE] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from speech_enhance.model.enhance import enhance_array
from speech_enhance.model.net import ARCHITECTURES, build_model, complexity, load_model
from speech_enhance.pipeline import allocator


def main():
    # As `speech-enhance enhance` does (speech_enhance.pipeline.allocator).
    allocator.keep_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES))
    parser.add_argument("--model", default=None, help="a model file to time instead of fresh networks")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = (0.1 * np.random.default_rng(0).standard_normal(int(args.seconds * 16000))).astype(np.float32)
    results = {"machine": f"{os.cpu_count()} CPUs", "threads": 1, "torch": torch.__version__,
               "audio_seconds": args.seconds}
    models = {args.model: load_model(args.model)[0]} if args.model else {a: build_model(a).eval() for a in args.arch}
    for name, model in models.items():
        results[name] = {**model.config(), **complexity(model)}
        for backend, runner in _backends(model).items():
            enhance_array(runner, x[:16000])  # warm-up
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                enhance_array(runner, x)
                runs.append((time.perf_counter() - started) / args.seconds)
            results[name][backend] = {"rtf_runs": runs, "rtf_best": min(runs)}
    print(json.dumps(results, indent=2))


def _backends(model: torch.nn.Module) -> dict:
    out = {"torch": model}
    try:
        from speech_enhance.model.export import OnnxNet, export_onnx

        out["onnx"] = OnnxNet(export_onnx(model, None), threads=1)
    except ImportError:  # the onnx extra is not installed
        pass
    return out


if __name__ == "__main__":
    main()
