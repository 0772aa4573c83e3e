"""The end-to-end demo: the embedded corpus → dataset → training → evaluation report.

Sized for a 2-core CPU in a few minutes: one noise file per utterance, three SNRs,
a few epochs. Every step is the same code the CLI runs; re-running skips what is done.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from speech_enhance.model.evaluate import evaluate
from speech_enhance.model.train import BEST_MODEL, TrainConfig, train
from speech_enhance.pipeline.build import BuildConfig, build_dataset
from speech_enhance.pipeline.cluster import init_ray
from speech_enhance.pipeline.corpus import make_corpus

DEMO_SNRS = [5.0, 0.0, -5.0]


def run_demo(out_dir: str | os.PathLike = "runs/demo", epochs: int = 4, log=print) -> dict:  # noqa: ANN001
    out = Path(out_dir)
    started = time.time()
    corpus = out / "corpus"
    if not (corpus / "speech").exists():
        log(f"[1/4] synthesising the default corpus into {corpus}")
        make_corpus(corpus)
    init_ray()
    log("[2/4] building the dataset")
    build_dataset(
        BuildConfig(str(corpus / "speech"), str(corpus / "noise"), str(out / "data"),
                    snrs=DEMO_SNRS, noises_per_clean=1),
        log=log,
    )
    log(f"[3/4] training for up to {epochs} epochs")
    train(TrainConfig(data=str(out / "data"), out=str(out / "run"), epochs=epochs, batch_size=8), log=log)
    log("[4/4] evaluating on the test split")
    report = evaluate(str(out / "data"), str(out / "run" / BEST_MODEL), str(out / "report"), log=log)
    log(f"demo finished in {time.time() - started:.0f} s; report: {out / 'report' / 'report.md'}")
    return report
