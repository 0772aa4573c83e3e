"""Dataset build: Ray Data fans the mixture manifest out to workers that render,
featurise and write Parquet. This module is orchestration only; the audio work is the
pure functions of :mod:`speech_enhance.pipeline.dsp` and :mod:`speech_enhance.pipeline.audio`.

Output (see README "Dataset layout")::

    DATA/dataset.json        config, versions, counts, skipped inputs, "complete" last
    DATA/manifest.parquet    one row per mixture, enough to re-render it exactly
    DATA/{train,val,test}/   one row per 64-frame patch
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from speech_enhance.pipeline import audio, dsp, storage, store
from speech_enhance.pipeline.cluster import balanced_groups, contiguous_groups, init_ray, task_count
from speech_enhance.pipeline.config import PATCH_TENSORS, BuildConfig
from speech_enhance.pipeline.dataset import (
    DatasetError,
    load_rir,
    patch_file_name,
    render_row,
)
from speech_enhance.pipeline.plan import SPLITS, MixturePlan, SourceFile, as_rows, plan_mixtures

# Ray tasks per CPU and most items per task (cluster.task_count) for writing file jobs
# (each ~128 MiB of patches by default) and for probing input files (dealt out by size,
# cluster.balanced_groups). Ray Data starts a task's successor a scheduling round after
# the task ends, so one task per CPU beat two (BENCHMARKS.md, "Dataset build").
WRITE_TASKS_PER_CPU, FILES_PER_TASK = 1, 16
PROBE_TASKS_PER_CPU, PROBES_PER_TASK = 1, 64
# Patch rows per Parquet row group (~12 MiB at float32): small enough to write as we go.
ROW_GROUP_ROWS = 64
# Spectra do not compress (LZ4 leaves them at their raw size) and dictionary-encoding floats
# only costs CPU; statistics are kept for the scalar columns that readers filter on.
PARQUET_ARGS = {
    "compression": "none",
    "use_dictionary": False,
    "write_statistics": ["mixture_id", "patch_index", "snr_db"],
}


class BuildError(DatasetError):
    """A build that cannot go on; the message says why and what to do."""

# ---------------------------------------------------------------- worker side
def mixture_patch_columns(row: dict, dtype: str) -> tuple[dict[str, np.ndarray], dsp.Mixture]:
    """Render one manifest row into its patch rows (columnar numpy)."""
    mix = render_row(row)
    patches = dsp.mixture_patches(mix)
    count = len(patches["noisy_mag"])
    columns = {
        "mixture_id": np.full(count, row["mixture_id"], dtype=np.int64),
        "patch_index": np.arange(count, dtype=np.int32),
        "snr_db": np.full(count, row["snr_db"], dtype=np.float32),
    }
    columns.update({name: patches[name].astype(dtype, copy=False) for name in PATCH_TENSORS})
    return columns, mix


def write_patch_file(rows: list[dict], path: str | os.PathLike, dtype: str = "float32") -> list[dict]:
    """Render ``rows`` (manifest rows) and write all their patches to one Parquet file.

    Mixtures are rendered and written one row group at a time, so memory stays at a
    few mixtures whatever the file size. The file appears under its final name only
    when complete (temp file, then rename), and its name comes from the manifest, so a
    retried task replaces it instead of duplicating rows. ``path`` may be a URI
    (:mod:`speech_enhance.pipeline.storage`). Returns, per mixture, what the manifest needs from the
    worker: gain, measured SNR and patch count."""
    results, pending, pending_rows, writer = [], [], 0, None
    with storage.open_output(path) as sink:
        for row in rows:
            columns, mix = mixture_patch_columns(row, dtype)
            count = len(columns["mixture_id"])
            results.append({"mixture_id": int(row["mixture_id"]), "gain": mix.gain,
                            "measured_snr_db": mix.measured_snr_db, "n_patches": count})
            pending.append(columns)
            pending_rows += count
            if pending_rows >= ROW_GROUP_ROWS:
                writer = _flush(writer, sink, pending)
                pending, pending_rows = [], 0
                storage.release_written(sink)
        if pending:
            writer = _flush(writer, sink, pending)
        writer.close()
        storage.release_written(sink)
    return results


def _flush(writer: pq.ParquetWriter | None, sink: pa.NativeFile, pending: list[dict]) -> pq.ParquetWriter:
    """Write the pending mixtures as one row group, opening the file on first use.

    The mixtures' arrays go to the writer as the chunks of one table, not concatenated
    first: one copy of ~12 MiB per row group fewer."""
    table = pa.concat_tables([store.to_arrow(columns) for columns in pending])
    if writer is None:
        writer = pq.ParquetWriter(sink, table.schema, **PARQUET_ARGS)
    writer.write_table(table, row_group_size=len(table))  # one row group, however many chunks
    return writer


def _write_job(job: dict, dtype: str, fault_injection: dict | None = None) -> list[dict]:
    """Write one file job (a path and its manifest rows) → per-mixture results, each
    tagged with the Ray node that wrote it."""
    fault = fault_injection or {}
    if "marker" in fault and job["index"] == 0 and not os.path.exists(fault["marker"]):
        Path(fault["marker"]).write_text("worker killed\n")
        os._exit(1)  # a hard crash, as a killed worker process would die
    time.sleep(fault.get("delay_s", 0))
    node = ray.get_runtime_context().get_node_id()
    return [{**r, "node": node} for r in write_patch_file(job["mixtures"], job["path"], dtype)]


def _write_task(task: dict, dtype: str, fault_injection: dict | None = None) -> list[dict]:
    """Ray Data UDF: one task's consecutive file jobs, written in order."""
    return [r for job in task["jobs"] for r in _write_job(job, dtype, fault_injection)]


def probe_file(row: dict) -> dict:
    """Load and check one input file; records its length or the reason it is unusable."""
    loader = {"clean": audio.load_clean, "noise": audio.load_audio, "rir": load_rir}[row["kind"]]
    try:
        return {**row, "n_samples": len(loader(row["path"])), "reason": ""}
    except audio.AudioError as err:
        return {**row, "n_samples": 0, "reason": err.reason}


# ---------------------------------------------------------------- driver side
def _existing_state(out: str, config: dict, overwrite: bool) -> str:
    """"fresh", "up-to-date", or raise; with ``overwrite`` clears what a build wrote."""
    info_path = storage.join(out, "dataset.json")
    if storage.is_empty_dir(out):
        return "fresh"
    if storage.is_file(info_path) and not overwrite:
        info = storage.read_json(info_path)
        if info.get("complete") and info.get("config") == config:
            return "up-to-date"
        why = "was built with a different config" if info.get("complete") else "holds an unfinished build"
        raise BuildError(f"{out} {why}; pass --overwrite to replace it")
    if not overwrite:
        raise BuildError(f"{out} is not empty and is not a dataset; choose another --out or pass --overwrite")
    for name in (*SPLITS, "manifest.parquet", "dataset.json"):
        storage.delete(storage.join(out, name))
    return "fresh"


def list_inputs(cfg: BuildConfig) -> tuple[list[dict], list[dict]]:
    """Discover the input files: (items to probe, files already skipped)."""
    items, skipped = [], []
    for kind, roots in (("clean", cfg.clean_dirs), ("noise", cfg.noise_dirs), ("rir", cfg.rir_dirs)):
        if not roots:  # no --rir
            continue
        labels = audio.folder_labels(roots)
        for root, label in zip(map(Path, roots), labels, strict=True):
            files = audio.discover_audio(root)
            if not files:
                raise BuildError(f"{root}: no audio files found (looked for {sorted(audio.audio_extensions())})")
            for path in files:
                # Clean files are grouped by speaker, noise files by type (parent folder).
                try:
                    group = audio.speaker_of(path, root, cfg.speaker_regex if kind == "clean" else None)
                except audio.AudioError as err:
                    skipped.append({"path": str(path), "kind": kind, "reason": err.reason})
                    continue
                if kind == "clean" and len(roots) > 1:
                    group = f"{label}/{group}"  # speaker names stay unique per folder
                items.append({"path": str(path.resolve()), "kind": kind, "group": group})
    return items, skipped


def sort_probed(
    cfg: BuildConfig, probed: list[dict], skipped: list[dict]
) -> tuple[list[SourceFile], list[SourceFile], list[dict], list[SourceFile]]:
    """Split probe results into usable clean, noise and RIR files and skipped ones."""
    usable: dict[str, list[SourceFile]] = {"clean": [], "noise": [], "rir": []}
    for row in sorted(probed, key=lambda r: r["path"]):
        if row["reason"]:
            skipped.append({"path": row["path"], "kind": row["kind"], "reason": row["reason"]})
            continue
        usable[row["kind"]].append(SourceFile(row["path"], row["group"], row["n_samples"]))
    clean, noise, rirs = usable["clean"], usable["noise"], usable["rir"]
    if not clean:
        raise BuildError(f"{cfg.clean_dir}: no usable clean speech ({len(skipped)} files skipped: {_reasons(skipped)})")
    if not noise:
        raise BuildError(f"{cfg.noise_dir}: no usable noise ({len(skipped)} files skipped: {_reasons(skipped)})")
    if cfg.rir_dir is not None and not rirs:
        raise BuildError(f"{cfg.rir_dir}: no usable impulse response ({_reasons(skipped)})")
    return clean, noise, skipped, rirs


def _probe_inputs(cfg: BuildConfig) -> tuple[list[SourceFile], list[SourceFile], list[dict], list[SourceFile]]:
    items, skipped = list_inputs(cfg)
    # Plain Ray tasks, not Ray Data: the probe returns one small dict per input file, so
    # streaming buys nothing, and a Ray Data execution costs more to start and stop.
    n_tasks = task_count(len(items), PROBES_PER_TASK, PROBE_TASKS_PER_CPU)
    probe = ray.remote(probe_files)
    parts = ray.get([probe.remote(group) for group in probe_groups(items, n_tasks)])
    return sort_probed(cfg, [row for part in parts for row in part], skipped)


def probe_groups(items: list[dict], n_tasks: int) -> list[list[dict]]:
    """Deal the input items out to ``n_tasks`` probe tasks of about equal cost, file
    size standing in for the cost of loading a file
    (:func:`~speech_enhance.pipeline.cluster.balanced_groups`)."""
    groups = balanced_groups([_file_size(item["path"]) for item in items], n_tasks)
    return [[items[i] for i in group] for group in groups]


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # the probe itself reports why the file is unusable
        return 0


def probe_files(items: list[dict]) -> list[dict]:
    """:func:`probe_file` for each item: one Ray task's share of the probe."""
    return [probe_file(item) for item in items]


def plan(cfg: BuildConfig, clean: list[SourceFile], noise: list[SourceFile],
         rirs: list[SourceFile]) -> tuple[list[MixturePlan], dict, list[str]]:
    """The build's mixtures from its probed inputs (:func:`~speech_enhance.pipeline.plan.plan_mixtures`)."""
    config = cfg.effective()
    return plan_mixtures(clean, noise, config["snrs"], tuple(config["split"]), cfg.seed, cfg.noises_per_clean,
                         cfg.split_noise, snr_range=cfg.snr_range, mixtures_per_clean=cfg.mixtures_per_clean,
                         variety=cfg.variety(), rirs=rirs, train_on_val_noise=cfg.train_on_val_noise)


def _reasons(skipped: list[dict]) -> str:
    return "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:5])


def _versions() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "soundfile": audio.sf.__version__,
        "soxr": audio.soxr.__version__,
    }


def file_jobs(rows: list[dict], out: str, rows_per_file: int) -> list[dict]:
    """Group each split's mixtures into files of about ``rows_per_file`` patch rows."""
    jobs = []
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        if not split_rows:
            continue
        mean_patches = sum(r["n_patches"] for r in split_rows) / len(split_rows)
        per_file = max(1, round(rows_per_file / mean_patches))
        for start in range(0, len(split_rows), per_file):
            chunk = split_rows[start : start + per_file]
            jobs.append({"index": len(jobs), "path": storage.join(out, split, patch_file_name(chunk[0]["mixture_id"])),
                         "mixtures": chunk})
    return jobs


def write_tasks(jobs: list[dict], n_tasks: int) -> list[list[dict]]:
    """Deal the file jobs out to ``n_tasks`` Ray tasks of about equal patch counts.

    Each task takes a run of consecutive mixtures: consecutive files share clean
    utterances, which each worker has cached (round-robin would reload them). Runs are
    cut at equal patch counts wherever that falls, not only between files, so that no
    CPU idles while its partner finishes a longer task. A file that
    a cut falls in is written as two, the second named after its own first mixture, so
    file names still follow from the manifest and the task count, and a retried task
    replaces its files. Jobs keep their order and are renumbered (``index``)."""
    mixtures = [(j, m) for j, job in enumerate(jobs) for m in job["mixtures"]]
    tasks: list[list[dict]] = []
    for run in contiguous_groups([m["n_patches"] for _, m in mixtures], n_tasks):
        task = []
        for j, group in itertools.groupby((mixtures[k] for k in run), key=lambda pair: pair[0]):
            chunk = [m for _, m in group]
            path = jobs[j]["path"]
            if chunk[0] is not jobs[j]["mixtures"][0]:  # the second part of a cut file
                path = storage.join(storage.parent(path), patch_file_name(chunk[0]["mixture_id"]))
            task.append({"path": path, "mixtures": chunk})
        tasks.append(task)
    for index, job in enumerate(itertools.chain.from_iterable(tasks)):
        job["index"] = index
    return tasks


def _write_files(jobs: list[dict], dtype: str, fault_injection: dict | None = None) -> list[dict]:
    """Fan the file jobs of every split out over Ray in one dataset.

    Writing inside the worker (rather than ``Dataset.write_parquet``) keeps the patch
    tensors out of Ray's object store, so memory does not grow with the dataset, and
    makes every file's name a function of the manifest, so a retried task replaces
    its file instead of duplicating rows. Each
    Ray task writes a run of consecutive files (:func:`write_tasks`,
    :func:`~speech_enhance.pipeline.cluster.task_count`)."""
    n_tasks = task_count(len(jobs), FILES_PER_TASK, WRITE_TASKS_PER_CPU)
    tasks = [{"jobs": task} for task in write_tasks(jobs, n_tasks)]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    return ds.flat_map(_write_task, fn_kwargs={"dtype": dtype, "fault_injection": fault_injection}).take_all()


def build_dataset(cfg: BuildConfig, overwrite: bool = False, log=print, dashboard: bool = True) -> dict:  # noqa: ANN001
    """Run the whole build; returns the dataset.json contents. If Ray is not running
    yet, a local Ray is started, without its dashboard when ``dashboard`` is False
    (:func:`speech_enhance.pipeline.cluster.init_ray`): the CLI's choice, as nothing in a build
    reads it, but a process that trains afterwards on the same Ray needs it."""
    cfg.validate()
    config = cfg.effective()
    out = storage.resolve(cfg.out_dir)
    state = _existing_state(out, config, overwrite)
    if state == "up-to-date":
        log(f"{out}: dataset is complete and built with the same config - nothing to do")
        return storage.read_json(storage.join(out, "dataset.json"))
    started = time.time()
    init_ray(dashboard=dashboard)
    clean, noise, skipped, rirs = _probe_inputs(cfg)
    mixtures, assignment, warnings = plan(cfg, clean, noise, rirs)
    if not mixtures:
        raise BuildError("the plan has no mixtures: " + "; ".join(warnings or ["check --split"]))
    per_split = {s: [m for m in mixtures if m.split == s] for s in SPLITS}
    log(
        f"planned {len(mixtures)} mixtures ("
        + ", ".join(f"{s} {len(per_split[s])}" for s in SPLITS)
        + f") from {len(clean)} clean files of {len({c.speaker for c in clean})} speakers, "
        f"{len(noise)} noise files" + (f", {len(rirs)} impulse responses" if rirs else "")
        + (f", SNRs drawn from {config['snr_range']} dB" if cfg.snr_range else f", SNRs {config['snrs']}")
        + f"; {len(skipped)} input files skipped"
    )
    for w in warnings:
        log(f"warning: {w}")
    storage.make_dirs(out)
    info = {
        "complete": False,
        "config": config,
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "assignment": assignment,
        "skipped": skipped,
        "warnings": warnings,
    }
    storage.write_json(storage.join(out, "dataset.json"), info)
    fault = cfg.fault_injection or json.loads(os.environ.get("SPEECH_ENHANCE_FAULT_INJECTION", "null"))
    results = _write_files(file_jobs(as_rows(mixtures), out, config["rows_per_file"]), config["dtype"], fault)
    manifest, splits = _finish_manifest(out, mixtures, results)
    seconds = time.time() - started
    audio_seconds = sum(m.n_samples for m in mixtures) / dsp.SAMPLE_RATE
    info.update(
        splits=splits,
        totals={
            "mixtures": len(mixtures),
            "patches": sum(s["patches"] for s in splits.values()),
            "bytes": sum(s["bytes"] for s in splits.values()),
            "mixture_seconds": audio_seconds,
        },
        seconds=seconds,
        mixture_seconds_per_second=audio_seconds / seconds,
        ray_cluster_cpus=ray.cluster_resources().get("CPU", 0),
        mixtures_per_node=_count_by(results, "node"),
    )
    with storage.open_output(storage.join(out, "manifest.parquet")) as f:
        pq.write_table(manifest, f)
    info["complete"] = True  # written last: a crash before here never looks complete
    storage.write_json(storage.join(out, "dataset.json"), info)
    t = info["totals"]
    log(
        f"done: {t['mixtures']} mixtures, {t['patches']} patches, {t['bytes'] / 2**20:.1f} MiB in "
        f"{seconds:.1f} s ({info['mixture_seconds_per_second']:.1f} mixture-seconds of audio per second)"
    )
    if skipped:
        log(f"skipped {len(skipped)} input files (listed in dataset.json):")
        for s in skipped:
            log(f"  {s['path']}: {s['reason']}")
    return info


def _count_by(rows: list[dict], key: str) -> dict:
    counts: dict = {}
    for r in rows:
        counts[r[key]] = counts.get(r[key], 0) + 1
    return counts


def _finish_manifest(out: str, mixtures: list[MixturePlan], results: list[dict]) -> tuple[pa.Table, dict]:
    """Join the workers' per-mixture results (gain, measured SNR) into the manifest and
    check that every planned mixture was written exactly once, whole."""
    by_id = {int(r["mixture_id"]): r for r in results}
    rows = as_rows(mixtures)
    if len(results) != len(rows) or len(by_id) != len(rows):
        raise BuildError(f"{out}: {len(results)} mixture results for {len(rows)} planned mixtures")
    for r in rows:
        done = by_id[r["mixture_id"]]
        if int(done["n_patches"]) != r["n_patches"]:
            raise BuildError(f"{out}: mixture {r['mixture_id']} wrote {done['n_patches']} patches, planned {r['n_patches']}")
        r["gain"], r["measured_snr_db"] = float(done["gain"]), float(done["measured_snr_db"])
    splits = {}
    for split in SPLITS:
        planned = [r for r in rows if r["split"] == split]
        files = storage.list_files(storage.join(out, split), ".parquet")
        splits[split] = {
            "mixtures": len(planned),
            "patches": sum(r["n_patches"] for r in planned),
            "bytes": sum(size for _, size in files),
            "files": len(files),
        }
    return pa.Table.from_pylist(rows), splits
