"""Evaluation of a trained model: patch loss, full-utterance metrics against classical
baselines, and a report with tables, figures and listening samples.

Test mixtures are re-rendered exactly from the manifest and enhanced whole (the model
is fully convolutional). The clean reference and every estimate go through the same
STFT/iSTFT, so the metrics compare enhancement, not analysis/synthesis artefacts.
Mixtures are fanned out over Ray (one model per actor); the per-mixture work is the
pure function :func:`evaluate_mixture`.

:func:`evaluate_pairs` scores recordings instead of a build: a folder of noisy files and
a folder of their clean references (VoiceBank-DEMAND's and the DNS Challenge's test sets
come so), in the same report. Each pair's input SNR is estimated from the pair itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn

from speech_enhance.model import metrics
from speech_enhance.model.data import local_batches
from speech_enhance.model.enhance import enhance_array, enhance_at_strengths
from speech_enhance.model.net import load_model, patch_input, reads_phase
from speech_enhance.pipeline import dsp, storage
from speech_enhance.pipeline.audio import AudioError, discover_audio, load_audio, write_audio
from speech_enhance.pipeline.cluster import hide_ray_data_progress, init_ray
from speech_enhance.pipeline.dataset import load_manifest, read_dataset_info, render_row

BASELINES = ("wiener", "spectral_gating", "rnnoise")
SNR_BAND_DB = 5.0
METHODS = ("noisy", "model", "model_limited", *BASELINES)
BASELINE_NAMES = {"wiener": "Wiener", "spectral_gating": "spectral gating", "rnnoise": "RNNoise"}
# "model": the full mask (`enhance --strength 1`). "model_limited": the same model at its
# default strength s (mask floored at 1 - s), which is what `enhance` applies unless told
# otherwise. A briefly trained mask that suppresses everything it doubts buys SI-SDR
# with intelligibility; limiting it trades some SI-SDR back. s is chosen on the
# validation split (never on test) when the model is trained and saved in the model
# file (calibrate_strength, choose_strength); a model file without one is calibrated here on the
# dataset's validation split, or, without one, used at LIMITED_STRENGTH.
LIMITED_STRENGTH = 0.8
STRENGTH_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CALIBRATION_MIXTURES = 24
METRICS = ("pesq", "stoi", "si_sdr")
METRIC_NAMES = {"si_sdr": "SI-SDR", "stoi": "STOI", "pesq": "PESQ"}  # in the report's order


@torch.no_grad()
def patch_l1(data_dir: str | os.PathLike, split: str, model: nn.Module | None = None) -> float:
    """Mean L1 between Mask × Noisy and Clean magnitudes over every patch of a split;
    without a model, the identity mask (mask = 1, output = noisy input)."""
    with_phase = model is not None and reads_phase(model)
    if model is not None:
        model.eval()
    total, count = 0.0, 0
    for noisy, clean, *phase in local_batches(data_dir, split, with_phase=with_phase):
        enhanced = model(patch_input(model, noisy, phase[0] if phase else None)) * noisy if model is not None else noisy
        total += torch.sum(torch.abs(enhanced - clean)).item()
        count += clean.numel()
    return total / max(count, 1)


def test_l1(model: nn.Module, data_dir: str | os.PathLike, split: str = "test") -> float:
    """The model's patch L1 on a split (the original project's test loss)."""
    return patch_l1(data_dir, split, model)


def identity_l1(data_dir: str | os.PathLike, split: str) -> float:
    """The patch L1 of the identity mask on a split."""
    return patch_l1(data_dir, split)


def stft_roundtrip(x: np.ndarray) -> np.ndarray:
    """``x`` through the STFT and iSTFT, as every estimate is: what references are scored as."""
    return dsp.istft(dsp.stft(x), len(x)).numpy()


def enhance_all(model: nn.Module, noisy: np.ndarray,
                limited_strength: float = LIMITED_STRENGTH) -> dict[str, np.ndarray]:
    full, limited = enhance_at_strengths(model, noisy, [1.0, limited_strength])
    return {
        "noisy": stft_roundtrip(noisy),
        "model": full,
        "model_limited": limited,
        "wiener": metrics.wiener(noisy),
        "spectral_gating": stft_roundtrip(metrics.spectral_gating(noisy)),
        # Without the rnnoise extra its row is NaN and the report says it is missing.
        **({"rnnoise": metrics.rnnoise(noisy)} if metrics.rnnoise_available() else {}),
    }


def _snr_band(snr_db: float) -> float:
    """SNRs drawn from a range (build --snr-range) or estimated are reported in 5 dB bands."""
    return float(SNR_BAND_DB * round(snr_db / SNR_BAND_DB)) if math.isfinite(snr_db) else math.nan


def score_methods(model: nn.Module, noisy: np.ndarray, clean: np.ndarray,
                  limited_strength: float = LIMITED_STRENGTH) -> dict[str, float]:
    """{"method.metric": value} of every method on one noisy signal and its clean reference."""
    reference = stft_roundtrip(clean)
    estimates = enhance_all(model, noisy, limited_strength)
    out = {}
    for method in METHODS:
        values = metrics.all_metrics(reference, estimates[method]) if method in estimates else {}
        for name in METRICS:
            out[f"{method}.{name}"] = values.get(name, math.nan)
    return out


def evaluate_mixture(model: nn.Module, row: dict, limited_strength: float = LIMITED_STRENGTH) -> dict:
    """Metrics of every method on one manifest row, or on one pair of files (a row of
    :func:`pair_files`; one that cannot be scored comes back with its ``error``)."""
    if "noisy_path" in row:
        return _evaluate_pair(model, row, limited_strength)
    mix = render_row(row)
    out = {"mixture_id": int(row["mixture_id"]), "snr_db": float(row["snr_db"]),
           "snr_band": _snr_band(float(row["snr_db"])), "noise_type": row["noise_type"], "speaker": row["speaker"]}
    return {**out, **score_methods(model, mix.noisy, mix.clean, limited_strength)}


# ---------------------------------------------------------------- paired recordings
FILE_ID = re.compile(r"fileid_\d+")  # the DNS Challenge's test sets: noisy "..._fileid_7.wav", clean "clean_fileid_7.wav"
PAIR_SLACK = dsp.HOP  # samples two files of a pair may differ by (rounding when resampled from other rates)


def pair_files(noisy_dir: str | os.PathLike, clean_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(pairs, unpaired): each noisy file below ``noisy_dir`` with the clean file at the
    same relative path below ``clean_dir``, else the one with the same ``fileid_N`` in its
    name. A pair's ``noise_type`` is its folder below ``noisy_dir`` ("all" at the top), so
    a test set kept one folder per noise type is reported per noise type."""
    noisy_root, clean_root = Path(noisy_dir), Path(clean_dir)
    for option, root in (("--noisy", noisy_root), ("--clean", clean_root)):
        if not root.is_dir():
            raise FileNotFoundError(f"{option} {root}: no such folder")
    clean_files = discover_audio(clean_root)
    by_path = {f.relative_to(clean_root).as_posix(): f for f in clean_files}
    by_id: dict[str, list[Path]] = {}
    for f in clean_files:
        if match := FILE_ID.search(f.name):
            by_id.setdefault(match.group(0), []).append(f)
    pairs, unpaired = [], []
    for noisy in discover_audio(noisy_root):
        rel = noisy.relative_to(noisy_root).as_posix()
        match = FILE_ID.search(noisy.name)
        clean = by_path.get(rel)
        if clean is None and match and len(by_id.get(match.group(0), [])) == 1:  # two with one fileid: no guess
            clean = by_id[match.group(0)][0]
        if clean is None:
            by_name = f" or one with its {match.group(0)}" if match else ""
            unpaired.append({"file": rel, "error": f"{noisy}: no clean partner ({clean_root / rel}{by_name})"})
            continue
        pairs.append({"mixture_id": len(pairs), "file": rel, "noisy_path": str(noisy), "clean_path": str(clean),
                      "noise_type": noisy.parent.relative_to(noisy_root).as_posix() if noisy.parent != noisy_root
                      else "all"})
    return pairs, unpaired


def load_pair(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) of a pair at 16 kHz mono, cut to the same length; AudioError if
    either cannot be read or their lengths differ by more than rounding."""
    noisy, clean = load_audio(row["noisy_path"]), load_audio(row["clean_path"])
    if abs(len(noisy) - len(clean)) > PAIR_SLACK:
        raise AudioError(row["noisy_path"], f"{len(noisy) / dsp.SAMPLE_RATE:.3f} s long, its clean file "
                                            f"{row['clean_path']} {len(clean) / dsp.SAMPLE_RATE:.3f} s")
    n = min(len(noisy), len(clean))
    return noisy[:n], clean[:n]


def estimated_snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The input SNR of a pair: the clean signal's energy over the rest of the noisy one's."""
    noise = float(np.sum((noisy - clean).astype(np.float64) ** 2))
    return 10 * math.log10(float(np.sum(clean.astype(np.float64) ** 2)) / noise) if noise > 0 else math.inf


def _evaluate_pair(model: nn.Module, row: dict, limited_strength: float) -> dict:
    # Every row has the same keys (Ray Data builds one table of them); "error" is empty when scored.
    out = {"mixture_id": int(row["mixture_id"]), "file": row["file"], "noise_type": row["noise_type"], "error": ""}
    try:
        noisy, clean = load_pair(row)
    except AudioError as err:
        return {**out, "snr_db": math.nan, "snr_band": math.nan, "error": str(err),
                **{f"{m}.{k}": math.nan for m in METHODS for k in METRICS}}
    snr = estimated_snr_db(noisy, clean)
    return {**out, "snr_db": snr, "snr_band": _snr_band(snr), **score_methods(model, noisy, clean, limited_strength)}


class _Evaluator:
    """Ray Data actor: loads the model once, evaluates batches of manifest rows."""

    def __init__(self, model_path: str, limited_strength: float):
        torch.set_num_threads(1)
        self.model, _ = load_model(model_path)
        self.limited_strength = limited_strength

    def __call__(self, row: dict) -> dict:
        return evaluate_mixture(self.model, row, self.limited_strength)


def choose_strength(stoi_delta: dict[float, float], stoi_delta_se: dict[float, float] | None = None) -> float:
    """The least limiting strength whose mean STOI change over the noisy input is
    non-negative by at least one standard error (``stoi_delta_se``; 0 if not given); if
    none is, the one that loses least.

    Taking the strength where validation STOI merely breaks even would put the test
    split's expected change at zero, and below it whenever test conditions are harder;
    one standard error of margin is the usual guard against picking a point the
    validation sample cannot tell from a loss."""
    se = stoi_delta_se or {}
    keeping = [s for s, d in stoi_delta.items() if d - se.get(s, 0.0) >= 0]
    return max(keeping) if keeping else max(stoi_delta, key=lambda s: (stoi_delta[s], s))


def stoi_delta_by_strength(model: nn.Module, rows: list[dict], grid: tuple[float, ...] = STRENGTH_GRID
                           ) -> tuple[dict[float, float], dict[float, float]]:
    """Mean STOI of the model at each strength minus the noisy input's over ``rows``,
    and its standard error (paired per mixture)."""
    deltas = {s: [] for s in grid}
    for row in rows:
        mix = render_row(row)
        reference = stft_roundtrip(mix.clean)
        noisy = metrics.stoi(reference, stft_roundtrip(mix.noisy))
        for s, enhanced in zip(grid, enhance_at_strengths(model, mix.noisy, list(grid)), strict=True):
            deltas[s].append(metrics.stoi(reference, enhanced) - noisy)
    mean = {s: float(np.mean(d)) for s, d in deltas.items()}
    se = {s: float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0 for s, d in deltas.items()}
    return mean, se


def calibrate_strength(model: nn.Module, data_dir: str | os.PathLike,
                       mixtures: int = CALIBRATION_MIXTURES) -> dict | None:
    """Choose the model's default strength on up to ``mixtures`` validation mixtures of
    ``data_dir`` (:func:`choose_strength` over STRENGTH_GRID); None without a validation
    split. Returns {"strength", "split", "mixtures", "stoi_delta": {"1.0": mean change,
    ...}, "stoi_delta_se": {...}} (string keys: it is stored in model files and JSON)."""
    rows = pick_rows([r for r in load_manifest(data_dir) if r["split"] == "val"], mixtures)
    if not rows:
        return None
    mean, se = stoi_delta_by_strength(model, rows)
    return {"strength": choose_strength(mean, se), "split": "val", "mixtures": len(rows),
            "stoi_delta": {str(s): d for s, d in mean.items()}, "stoi_delta_se": {str(s): e for s, e in se.items()}}


def _describe_deltas(choice: dict) -> str:
    se = choice.get("stoi_delta_se", {})
    return "validation STOI change by strength: " + ", ".join(
        f"{s}: {d:+.3f}" + (f" ± {se[s]:.3f}" if s in se else "") for s, d in choice["stoi_delta"].items())


def describe_strength(choice: dict) -> str:
    """One sentence: which strength the "model_limited" row used and why."""
    s = choice["strength"]
    head = (f"the mask floored at {1 - s:.1f}" if s < 1 else "the full mask") + \
        f" (strength {s}, what `enhance` applies by default)"
    if choice["source"] == "default":
        return f"{head}; a fallback: the model file has no default strength and the dataset no validation split"
    if "mixtures" not in choice:  # a model file saved with a strength but not how it was chosen
        return f"{head}; the model file's default strength"
    rule = (f"the least limiting strength that keeps the STOI of {choice['mixtures']} validation mixtures at or "
            f"above the noisy input's by at least one standard error ({_describe_deltas(choice)})")
    if choice["source"] == "model file":
        return f"{head}; the model file's default strength, chosen when it was trained as {rule}"
    return f"{head}; the model file has none, so it was chosen here as {rule}"


def strength_for_evaluation(model: nn.Module, meta: dict, data_dir: str | None, log=print) -> dict:  # noqa: ANN001
    """The strength of the "model_limited" row and where it came from: the model file's
    default strength, else chosen now on this dataset's validation split (none for
    recordings: ``data_dir`` None), else LIMITED_STRENGTH."""
    if "strength" in meta:
        return {"strength": float(meta["strength"]), "source": "model file",
                **{k: v for k, v in meta.get("strength_choice", {}).items() if k != "strength"}}
    chosen = calibrate_strength(model, data_dir) if data_dir is not None else None
    if chosen is None:
        return {"strength": LIMITED_STRENGTH, "source": "default", "mixtures": 0, "stoi_delta": {}}
    log(f"the model file has no default strength; chose {chosen['strength']} on {chosen['mixtures']} "
        f"validation mixtures ({_describe_deltas(chosen)})")
    return {**chosen, "source": "validation split"}


def pick_rows(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows, evenly spaced (deterministic) so every SNR and noise stays in."""
    if limit is None or len(rows) <= limit:
        return rows
    index = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in sorted(set(index))]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(per_mixture: list[dict], key: str | None = None) -> dict:
    """{group: {method: {metric: mean, metric_delta: mean improvement over noisy}}}."""
    groups: dict = {}
    for r in per_mixture:
        groups.setdefault("all" if key is None else str(r[key]), []).append(r)
    table = {}
    for group, rows in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        table[group] = {"n": len(rows)}
        for method in METHODS:
            entry = {}
            for m in METRICS:
                entry[m] = _mean([r[f"{method}.{m}"] for r in rows])
                entry[f"{m}_delta"] = _mean([r[f"{method}.{m}"] - r[f"noisy.{m}"] for r in rows])
            table[group][method] = entry
    return table


def paired_differences(rows: list[dict], base_rows: list[dict], method: str = "model",
                       base_method: str = "model") -> dict:
    """{metric: {"mean", "se", "n"}} of ``method``'s score minus ``base_method``'s, mixture
    by mixture over the mixtures both per-mixture lists hold (matched by ``mixture_id``).

    Pairing removes the spread between mixtures, which dwarfs the difference between two
    models on the same ones; ``se`` is the standard error of the mean difference."""
    base = {r["mixture_id"]: r for r in base_rows}
    pairs = [(r, base[r["mixture_id"]]) for r in rows if r["mixture_id"] in base]
    if not pairs:
        raise ValueError("the two reports share no mixture: evaluate both on the same data and split")
    out = {}
    for m in METRICS:
        diff = np.array([a[f"{method}.{m}"] - b[f"{base_method}.{m}"] for a, b in pairs], dtype=np.float64)
        diff = diff[~np.isnan(diff)]
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[m] = {"mean": float(diff.mean()) if len(diff) else float("nan"), "se": se, "n": len(diff)}
    return out


def _sort_key(group: str) -> tuple:
    try:
        return (0, -float(group))
    except ValueError:
        return (1, group)


def evaluate(data_dir: str, model_path: str, out_dir: str, max_mixtures: int | None = 200,
             samples: int = 3, log=print, split: str = "test") -> dict:  # noqa: ANN001
    """Write metrics.json, report.md, figures and samples to ``out_dir``. ``split`` "val"
    scores the validation split instead: what recipes and settings are chosen on, so the
    test split is only read to report a choice already made."""
    if split not in ("test", "val"):
        raise ValueError(f"--split must be test or val, got {split!r}")
    started = time.time()
    info = read_dataset_info(data_dir)
    model, meta = load_model(model_path)
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(data_dir)
    split_rows = [r for r in manifest if r["split"] == split]
    if not split_rows:
        raise ValueError(f"{data_dir}: the {split} split is empty; nothing to evaluate")
    rows = pick_rows(split_rows, max_mixtures)
    log(f"evaluating {len(rows)} of {len(split_rows)} {split} mixtures with {model_path}")
    patch_loss = {"model": test_l1(model, data_dir, split), "identity_mask": identity_l1(data_dir, split)}
    calibration = strength_for_evaluation(model, meta, data_dir, log)
    per_mixture = _score_rows(rows, model_path, calibration["strength"])
    source = {
        "data": str(data_dir),
        "dataset_config": info["config"],
        "split": split,
        "test_mixtures": len(split_rows),  # the key predates --split: the mixtures of the split scored
        "evaluated_mixtures": len(rows),
        "patch_l1": patch_loss,
    }
    return _finish_report(source, per_mixture, calibration, model, meta, model_path, rows, out, samples, started,
                          log)


def evaluate_pairs(noisy_dir: str, clean_dir: str, model_path: str, out_dir: str, max_mixtures: int | None = None,
                   samples: int = 3, log=print) -> dict:  # noqa: ANN001
    """:func:`evaluate`'s report on recordings: the noisy files below ``noisy_dir``, each
    against its clean file below ``clean_dir`` (:func:`pair_files`), per estimated SNR and
    per folder. A file without a clean partner, or one that cannot be read, is skipped and
    listed in the report. The model's default strength is its file's (no validation split here)."""
    started = time.time()
    model, meta = load_model(model_path)
    pairs, unpaired = pair_files(noisy_dir, clean_dir)
    if not pairs:
        raise ValueError(f"--noisy {noisy_dir}: no file has a clean partner in {clean_dir} "
                         "(the same path below the folder, or the same fileid_N in its name)")
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rows = pick_rows(pairs, max_mixtures)
    log(f"evaluating {len(rows)} of {len(pairs)} file pairs with {model_path}"
        + (f"; {len(unpaired)} noisy file(s) without a clean partner skipped" if unpaired else ""))
    calibration = strength_for_evaluation(model, meta, None, log)
    scored = _score_rows(rows, model_path, calibration["strength"])
    skipped = unpaired + [{"file": r["file"], "error": r["error"]} for r in scored if r["error"]]
    per_mixture = [{k: v for k, v in r.items() if k != "error"} for r in scored if not r["error"]]
    for bad in skipped:
        log(f"  skipped: {bad['error']}")
    if not per_mixture:
        raise ValueError(f"--noisy {noisy_dir}: none of the {len(rows)} pairs could be scored")
    source = {
        "data": f"{noisy_dir} (noisy) with {clean_dir} (clean)",
        "split": "pairs",
        "test_mixtures": len(pairs),
        "evaluated_mixtures": len(per_mixture),
        "skipped": skipped,
    }
    good = {r["mixture_id"] for r in per_mixture}
    return _finish_report(source, per_mixture, calibration, model, meta, model_path,
                          [r for r in rows if r["mixture_id"] in good], out, samples, started, log)


def _score_rows(rows: list[dict], model_path: str, strength: float) -> list[dict]:
    """:func:`evaluate_mixture` of every row, fanned out over Ray actors that load the model once."""
    init_ray()
    hide_ray_data_progress()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_mixture = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .map(_Evaluator, fn_constructor_kwargs={"model_path": storage.resolve(model_path),
                                                 "limited_strength": strength},
             compute=ray.data.ActorPoolStrategy(size=max(1, min(cpus, len(rows)))))
        .take_all()
    )
    return sorted(per_mixture, key=lambda r: r["mixture_id"])


def _finish_report(source: dict, per_mixture: list[dict], calibration: dict, model: nn.Module, meta: dict,
                   model_path: str, rows: list[dict], out: Path, samples: int, started: float,
                   log=print) -> dict:  # noqa: ANN001
    """The report of ``per_mixture`` (``source``: what was scored, in the report's words)
    with its summaries, samples and loss curve; metrics.json and report.md written."""
    report = {
        "model": str(model_path),
        "model_meta": {k: v for k, v in meta.items() if k != "format_version"},
        **source,
        "limited_strength": calibration,
        "overall": summarise(per_mixture)["all"],
        "per_snr": summarise(per_mixture, "snr_band"),
        "per_noise_type": summarise(per_mixture, "noise_type"),
        "per_mixture": per_mixture,
    }
    strength = calibration["strength"]
    report["samples"] = _write_samples(model, rows, out, samples, strength)
    curve = storage.join(storage.parent(storage.resolve(model_path)), "loss_curve.png")
    if storage.is_file(curve):
        (out / "loss_curve.png").write_bytes(storage.read_bytes(curve))
        report["loss_curve"] = "loss_curve.png"
    report["seconds"] = time.time() - started
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_report(report))
    o = report["overall"]
    log(f"overall (model at strength {strength} and with the full mask)  " + "  ".join(
        f"{m}: noisy {o['noisy'][m]:.3f} model {o['model_limited'][m]:.3f} full mask {o['model'][m]:.3f} "
        + " ".join(f"{BASELINE_NAMES[b]} {o[b][m]:.3f}" for b in BASELINES) for m in METRICS))
    log(f"report: {out / 'report.md'}")
    return report


def _write_samples(model: nn.Module, rows: list[dict], out: Path, count: int, strength: float) -> list[dict]:
    """A few mixtures across SNRs, enhanced as `enhance` would (at ``strength``): wav
    files and a spectrogram figure each."""
    written = []
    for row in pick_rows(rows, count)[:count]:
        if "noisy_path" in row:  # a pair of files
            noisy, clean = load_pair(row)
            snr_db, label = estimated_snr_db(noisy, clean), Path(row["file"]).with_suffix("").as_posix()
        else:
            mix = render_row(row)
            noisy, clean, snr_db, label = mix.noisy, mix.clean, float(row["snr_db"]), row["noise_type"]
        enhanced = enhance_array(model, noisy, strength)
        safe = re.sub(r"[/\\]+", "_", label)  # a pair's label is its path
        stem = f"mix{row['mixture_id']:06d}_snr{snr_db:+.0f}dB_{safe}"
        files = {}
        for kind, signal in (("noisy", noisy), ("enhanced", enhanced), ("clean", clean)):
            files[kind] = f"samples/{stem}_{kind}.wav"
            write_audio(out / files[kind], signal)
        files["figure"] = f"samples/{stem}_spectrogram.png"
        plot_spectrograms({"noisy": noisy, "enhanced": enhanced, "clean": clean},
                          out / files["figure"], title=f"{label} at {snr_db:+.0f} dB")
        written.append({"mixture_id": int(row["mixture_id"]), "snr_db": snr_db, "noise_type": label, **files})
    return written


def plot_spectrograms(signals: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(signals), 1, figsize=(8, 2.2 * len(signals)), sharex=True)
    for ax, (name, x) in zip(axes, signals.items(), strict=True):
        mag = dsp.stft(x).abs().numpy()
        db = 20 * np.log10(mag + 1e-5)
        seconds = len(x) / dsp.SAMPLE_RATE
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, seconds, 0, dsp.SAMPLE_RATE / 2000))
        ax.set_ylabel(f"{name}\nkHz")
    axes[-1].set_xlabel("seconds")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(groups: dict, label: str, strength: float) -> list[str]:
    names = {"model": "model, full mask", "model_limited": f"model, strength {strength} (default)",
             **BASELINE_NAMES}
    lines = [f"| {label} | method | n | PESQ | STOI | SI-SDR (dB) | ΔPESQ | ΔSTOI | ΔSI-SDR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, entry in groups.items():
        for method in METHODS:
            e = entry[method]
            lines.append(f"| {group} | {names.get(method, method)} | {entry['n']} | {e['pesq']:.3f} | {e['stoi']:.3f} | "
                         f"{e['si_sdr']:.2f} | {e['pesq_delta']:+.3f} | {e['stoi_delta']:+.3f} | "
                         f"{e['si_sdr_delta']:+.2f} |")
    return lines


def render_report(report: dict) -> str:
    o = report["overall"]
    pairs = report.get("split") == "pairs"  # evaluate_pairs: recordings, not a build's split
    split_name = {"test": "test", "val": "validation", "pairs": "paired"}[report.get("split", "test")]
    baselines = [b for b in BASELINES if not math.isnan(o[b]["si_sdr"])]
    best_baseline = max(baselines, key=lambda m: o[m]["si_sdr"])
    verdict = []
    strength = report["limited_strength"]["strength"]
    for m, unit in (("si_sdr", " dB"), ("stoi", ""), ("pesq", "")):
        verdict.append(
            f"- {METRIC_NAMES[m]}: model {o['model_limited'][m]:.3f}{unit} vs noisy {o['noisy'][m]:.3f}{unit} "
            f"({o['model_limited'][m + '_delta']:+.3f} at strength {strength}; full mask "
            f"{o['model'][m + '_delta']:+.3f}); "
            + ", ".join(f"{BASELINE_NAMES[b]} {o[b][m + '_delta']:+.3f}" for b in baselines)
        )
    if report.get("per_mixture"):  # paired: the spread between mixtures cancels (bench/compare.py)
        versus = "rnnoise" if "rnnoise" in baselines else best_baseline
        paired = paired_differences(report["per_mixture"], report["per_mixture"], "model_limited", versus)
        verdict.append(f"- Model minus {BASELINE_NAMES[versus]}, mixture by mixture at strength {strength} "
                       "(mean ± standard error): " + ", ".join(
                           f"{METRIC_NAMES[m]} {paired[m]['mean']:+.3f} ± {paired[m]['se']:.3f}" for m in METRIC_NAMES))
    if "rnnoise" not in baselines:
        verdict.append("- RNNoise: not run (install the `rnnoise` extra: `pip install 'speech-enhance[rnnoise]'`).")
    ahead = [name for m, name in METRIC_NAMES.items()
             if all(o["model_limited"][m] > o[b][m] for b in baselines)]
    behind = [name for name in METRIC_NAMES.values() if name not in ahead]
    if not ahead:
        compared = "none of the three measures"
    elif not behind:
        compared = ", ".join(ahead)
    else:
        compared = f"{', '.join(ahead)} (not on {', '.join(behind)})"
    verdict.append(f"- At its default strength the model is ahead of every baseline on {compared}.")
    lines = [
        "# Speech enhancement report",
        "",
        f"Model `{report['model']}` (epoch {report['model_meta'].get('epoch', '?')}, "
        f"{report['model_meta']['model_config']}"
        + (f", post-filter {report['model_meta']['post_filter']:g}" if report["model_meta"].get("post_filter") else "")
        + f") on `{report['data']}`: "
        + (f"{report['evaluated_mixtures']} of {report['test_mixtures']} file pairs, enhanced whole; "
         "SNRs estimated from each pair (clean against noisy minus clean)." if pairs else
         f"{report['evaluated_mixtures']} of {report['test_mixtures']} {split_name} mixtures, enhanced whole."),
        "",
    ]
    if report.get("skipped"):
        lines += [f"Skipped ({len(report['skipped'])}):", "", *(f"- {bad['error']}" for bad in report["skipped"]), ""]
    if report.get("patch_l1"):
        lines += [
            f"## Patch loss ({split_name} split)",
            "",
            "| mask | L1 on magnitude patches |",
            "|---|---|",
            f"| model | {report['patch_l1']['model']:.6f} |",
            f"| identity (mask = 1) | {report['patch_l1']['identity_mask']:.6f} |",
            "",
        ]
    lines += [
        "## Full utterances",
        "",
        "Improvement over the noisy input (Δ), against the baselines "
        f"(strongest by SI-SDR here: {BASELINE_NAMES[best_baseline]}):",
        "",
        *verdict,
        "",
        *_table({"all": o}, "set", strength),
        "",
        "### Per SNR (dB, to the nearest 5)",
        "",
        *_table(report["per_snr"], "SNR", strength),
        "",
        "### Per folder" if pairs else "### Per noise type",
        "",
        *_table(report["per_noise_type"], "folder" if pairs else "noise", strength),
        "",
    ]
    if report.get("loss_curve"):
        lines += ["## Training", "", f"![loss curve]({report['loss_curve']})", ""]
    lines += ["## Samples", ""]
    for s in report["samples"]:
        lines += [
            f"### Mixture {s['mixture_id']}: {s['noise_type']} at {s['snr_db']:+.0f} dB",
            "",
            f"![spectrograms]({s['figure']})",
            "",
            f"[noisy]({s['noisy']}) · [enhanced]({s['enhanced']}) · [clean]({s['clean']})",
            "",
        ]
    lines += ["Metrics: wide-band PESQ (P.862.2), STOI, SI-SDR; Δ = method − noisy, averaged per mixture. "
              "\"model, full mask\" (`model` in metrics.json): `enhance --strength 1`. \"model, strength "
              f"{strength} (default)\" (`model_limited`): {describe_strength(report['limited_strength'])}. "
              "The samples are enhanced at that strength.", ""]
    return "\n".join(lines)
