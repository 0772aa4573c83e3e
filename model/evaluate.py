"""Evaluation of a trained model: patch loss, full-utterance metrics against classical
baselines, and a report with tables, figures and listening samples.

Test mixtures are re-rendered exactly from the manifest and enhanced whole (the model
is fully convolutional). The clean reference and every estimate go through the same
STFT/iSTFT, so the metrics compare enhancement, not analysis/synthesis artefacts.
Mixtures are fanned out over Ray (one model per actor); the per-mixture work is the
pure function :func:`evaluate_mixture`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn

from speech_enhance.model import metrics
from speech_enhance.model.data import local_batches
from speech_enhance.model.enhance import enhance_array, enhance_at_strengths
from speech_enhance.model.net import load_model
from speech_enhance.pipeline import dsp, storage
from speech_enhance.pipeline.audio import write_audio
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
    if model is not None:
        model.eval()
    total, count = 0.0, 0
    for noisy, clean in local_batches(data_dir, split):
        enhanced = model(noisy) * noisy if model is not None else noisy
        total += torch.sum(torch.abs(enhanced - clean)).item()
        count += clean.numel()
    return total / max(count, 1)


def test_l1(model: nn.Module, data_dir: str | os.PathLike, split: str = "test") -> float:
    """The model's patch L1 on a split (the original project's test loss)."""
    return patch_l1(data_dir, split, model)


def identity_l1(data_dir: str | os.PathLike, split: str) -> float:
    """The patch L1 of the identity mask on a split."""
    return patch_l1(data_dir, split)


def _roundtrip(x: np.ndarray) -> np.ndarray:
    return dsp.istft(dsp.stft(x), len(x)).numpy()


def enhance_all(model: nn.Module, noisy: np.ndarray,
                limited_strength: float = LIMITED_STRENGTH) -> dict[str, np.ndarray]:
    full, limited = enhance_at_strengths(model, noisy, [1.0, limited_strength])
    return {
        "noisy": _roundtrip(noisy),
        "model": full,
        "model_limited": limited,
        "wiener": metrics.wiener(noisy),
        "spectral_gating": _roundtrip(metrics.spectral_gating(noisy)),
        # Without the rnnoise extra its row is NaN and the report says it is missing.
        **({"rnnoise": metrics.rnnoise(noisy)} if metrics.rnnoise_available() else {}),
    }


def evaluate_mixture(model: nn.Module, row: dict, limited_strength: float = LIMITED_STRENGTH) -> dict:
    """Metrics of every method on one manifest row."""
    mix = render_row(row)
    reference = _roundtrip(mix.clean)
    out = {"mixture_id": int(row["mixture_id"]), "snr_db": float(row["snr_db"]),
           # SNRs drawn from a range (build --snr-range) are reported in 5 dB bands.
           "snr_band": float(SNR_BAND_DB * round(float(row["snr_db"]) / SNR_BAND_DB)),
           "noise_type": row["noise_type"], "speaker": row["speaker"]}
    estimates = enhance_all(model, mix.noisy, limited_strength)
    for method in METHODS:
        values = metrics.all_metrics(reference, estimates[method]) if method in estimates else {}
        for name in METRICS:
            out[f"{method}.{name}"] = values.get(name, math.nan)
    return out


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
        reference = _roundtrip(mix.clean)
        noisy = metrics.stoi(reference, _roundtrip(mix.noisy))
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


def strength_for_evaluation(model: nn.Module, meta: dict, data_dir: str, log=print) -> dict:  # noqa: ANN001
    """The strength of the "model_limited" row and where it came from: the model file's
    default strength, else chosen now on this dataset's validation split, else
    LIMITED_STRENGTH."""
    if "strength" in meta:
        return {"strength": float(meta["strength"]), "source": "model file",
                **{k: v for k, v in meta.get("strength_choice", {}).items() if k != "strength"}}
    chosen = calibrate_strength(model, data_dir)
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
    init_ray()
    hide_ray_data_progress()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_mixture = (
        ray.data.from_items(rows, override_num_blocks=len(rows))
        .map(_Evaluator, fn_constructor_kwargs={"model_path": storage.resolve(model_path),
                                                 "limited_strength": calibration["strength"]},
             compute=ray.data.ActorPoolStrategy(size=max(1, min(cpus, len(rows)))))
        .take_all()
    )
    per_mixture.sort(key=lambda r: r["mixture_id"])
    report = {
        "model": str(model_path),
        "model_meta": {k: v for k, v in meta.items() if k != "format_version"},
        "data": str(data_dir),
        "dataset_config": info["config"],
        "split": split,
        "test_mixtures": len(split_rows),  # the key predates --split: the mixtures of the split scored
        "evaluated_mixtures": len(rows),
        "patch_l1": patch_loss,
        "limited_strength": calibration,
        "overall": summarise(per_mixture)["all"],
        "per_snr": summarise(per_mixture, "snr_band"),
        "per_noise_type": summarise(per_mixture, "noise_type"),
        "per_mixture": per_mixture,
    }
    report["samples"] = _write_samples(model, rows, out, samples, calibration["strength"])
    curve = storage.join(storage.parent(storage.resolve(model_path)), "loss_curve.png")
    if storage.is_file(curve):
        (out / "loss_curve.png").write_bytes(storage.read_bytes(curve))
        report["loss_curve"] = "loss_curve.png"
    report["seconds"] = time.time() - started
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_report(report))
    o = report["overall"]
    log(f"overall (model at strength {calibration['strength']} and with the full mask)  " + "  ".join(
        f"{m}: noisy {o['noisy'][m]:.3f} model {o['model_limited'][m]:.3f} full mask {o['model'][m]:.3f} "
        + " ".join(f"{BASELINE_NAMES[b]} {o[b][m]:.3f}" for b in BASELINES) for m in METRICS))
    log(f"report: {out / 'report.md'}")
    return report


def _write_samples(model: nn.Module, rows: list[dict], out: Path, count: int, strength: float) -> list[dict]:
    """A few mixtures across SNRs, enhanced as `enhance` would (at ``strength``): wav
    files and a spectrogram figure each."""
    written = []
    for row in pick_rows(rows, count)[:count]:
        mix = render_row(row)
        enhanced = enhance_array(model, mix.noisy, strength)
        stem = f"mix{row['mixture_id']:06d}_snr{row['snr_db']:+.0f}dB_{row['noise_type']}"
        files = {}
        for kind, signal in (("noisy", mix.noisy), ("enhanced", enhanced), ("clean", mix.clean)):
            files[kind] = f"samples/{stem}_{kind}.wav"
            write_audio(out / files[kind], signal)
        files["figure"] = f"samples/{stem}_spectrogram.png"
        plot_spectrograms({"noisy": mix.noisy, "enhanced": enhanced, "clean": mix.clean},
                          out / files["figure"], title=f"{row['noise_type']} at {row['snr_db']:+.0f} dB")
        written.append({"mixture_id": int(row["mixture_id"]), "snr_db": row["snr_db"],
                        "noise_type": row["noise_type"], **files})
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
    split_name = {"test": "test", "val": "validation"}[report.get("split", "test")]
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
        f"{report['model_meta']['model_config']}) on `{report['data']}`: "
        f"{report['evaluated_mixtures']} of {report['test_mixtures']} {split_name} mixtures, enhanced whole.",
        "",
        f"## Patch loss ({split_name} split)",
        "",
        "| mask | L1 on magnitude patches |",
        "|---|---|",
        f"| model | {report['patch_l1']['model']:.6f} |",
        f"| identity (mask = 1) | {report['patch_l1']['identity_mask']:.6f} |",
        "",
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
        "### Per noise type",
        "",
        *_table(report["per_noise_type"], "noise", strength),
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
