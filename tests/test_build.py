"""End-to-end dataset builds on a tiny corpus with the shared local Ray."""

import json
import shutil

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from speech_enhance.cli import main
from speech_enhance.pipeline import build, dataset, dsp, store

pytestmark = pytest.mark.timeout(300)


def _build(clean, noise, out, **kw):
    cfg = build.BuildConfig(str(clean), str(noise), str(out), snrs=[5.0, -5.0], **kw)
    return build.build_dataset(cfg)


def _patches(out, split):
    table = pads.dataset(str(out / split), format="parquet").to_table().sort_by(
        [("mixture_id", "ascending"), ("patch_index", "ascending")]
    )
    return table


@pytest.fixture(scope="module")
def built(ray_session, tiny_corpus, tmp_path_factory):
    clean, noise = tiny_corpus
    out = tmp_path_factory.mktemp("data") / "ds"
    info = _build(clean, noise, out)
    return out, info


def test_layout_counts_and_no_speaker_leakage(built):
    out, info = built
    assert info["complete"] and json.loads((out / "dataset.json").read_text())["complete"]
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    expected_cols = {"mixture_id", "split", "clean_path", "speaker", "noise_path", "snr_db", "measured_snr_db",
                     "noise_offset", "gain", "seed", "n_patches"}
    assert expected_cols <= set(manifest.columns)
    for split in ("train", "val", "test"):
        table = _patches(out, split)
        assert table.num_rows == manifest[manifest.split == split].n_patches.sum() == info["splits"][split]["patches"]
        assert store.decode_column(table, "noisy_mag").shape == (table.num_rows, 257, 64)
    speakers = manifest.groupby("speaker").split.nunique()
    assert (speakers == 1).all()
    noises = manifest.groupby("noise_path").split.nunique()
    assert (noises == 1).all()
    assert (abs(manifest.measured_snr_db - manifest.snr_db) < 0.1).all()


def test_manifest_re_renders_stored_tensors_exactly(built):
    out, _ = built
    row = dataset.load_manifest(out)[-1]
    mix = dataset.render_row(row)
    assert abs(mix.gain - row["gain"]) < 1e-6 * row["gain"]
    table = _patches(out, row["split"])
    ids = table["mixture_id"].to_numpy()
    stored = table.filter(ids == row["mixture_id"])
    expected = dsp.mixture_patches(mix)
    for name in store.TENSOR_COLUMNS:
        np.testing.assert_array_equal(store.decode_column(stored, name), expected[name])


def test_patch_file_holds_one_row_group_per_few_mixtures(built, tmp_path, monkeypatch):
    out, _ = built
    rows = [r for r in dataset.load_manifest(out) if r["split"] == "train"]
    monkeypatch.setattr(build, "ROW_GROUP_ROWS", 3)
    results = build.write_patch_file(rows, tmp_path / "part.parquet")
    assert [r["mixture_id"] for r in results] == [r["mixture_id"] for r in rows]
    # Mixtures are gathered until a row group has at least ROW_GROUP_ROWS rows.
    expected, group = [], 0
    for r in rows:
        group += r["n_patches"]
        if group >= 3:
            expected, group = [*expected, group], 0
    expected += [group] if group else []
    metadata = pq.ParquetFile(tmp_path / "part.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == expected
    assert pq.read_table(tmp_path / "part.parquet").equals(_patches(out, "train"))


def test_rerun_is_noop_and_other_config_is_refused(built, tiny_corpus, capsys):
    out, info = built
    clean, noise = tiny_corpus
    again = _build(clean, noise, out)
    assert again["started"] == info["started"]
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(build.BuildError, match="different config"):
        _build(clean, noise, out, seed=1)


def test_same_seed_gives_identical_manifest_and_tensors(built, tiny_corpus, tmp_path):
    out, _ = built
    clean, noise = tiny_corpus
    other = tmp_path / "again"
    _build(clean, noise, other, rows_per_file=7)  # different file sizes, same content
    a = pq.read_table(out / "manifest.parquet").drop_columns(["clean_path", "noise_path"])
    b = pq.read_table(other / "manifest.parquet").drop_columns(["clean_path", "noise_path"])
    assert a.equals(b)
    for split in ("train", "val", "test"):
        assert _patches(out, split).equals(_patches(other, split))
    assert len(list((other / "train").glob("*.parquet"))) > 1


def test_write_tasks_cut_at_equal_patch_counts_and_split_files_in_order():
    patches = [5, 7, 6, 9, 4, 8, 6, 5, 7, 3]  # per mixture; files of 4, 4 and 2 mixtures
    rows = [{"mixture_id": i, "split": "train" if i < 8 else "val", "n_patches": n} for i, n in enumerate(patches)]
    jobs = build.file_jobs(rows, "s3://bucket/ds", rows_per_file=26)
    assert [[m["mixture_id"] for m in job["mixtures"]] for job in jobs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert build.write_tasks(jobs, 1) == [jobs]  # one task: the files as planned
    tasks = build.write_tasks(jobs, 2)
    # 60 patches: the cut falls after mixture 4 (31 | 29), inside the second file.
    ids = [[[m["mixture_id"] for m in job["mixtures"]] for job in task] for task in tasks]
    assert ids == [[[0, 1, 2, 3], [4]], [[5, 6, 7], [8, 9]]]
    paths = [job["path"] for task in tasks for job in task]
    assert paths == ["s3://bucket/ds/train/part-00000000.parquet", "s3://bucket/ds/train/part-00000004.parquet",
                     "s3://bucket/ds/train/part-00000005.parquet", "s3://bucket/ds/val/part-00000008.parquet"]
    assert [job["index"] for task in tasks for job in task] == [0, 1, 2, 3]
    # However many tasks: every mixture once, in order, and no task is empty.
    for n in range(1, 12):
        tasks = build.write_tasks(jobs, n)
        assert len(tasks) == min(n, len(rows)) and all(tasks)
        assert [m["mixture_id"] for task in tasks for job in task for m in job["mixtures"]] == list(range(len(rows)))


def test_bad_inputs_are_skipped_with_reasons(ray_session, tiny_corpus, tmp_path):
    clean, noise = tiny_corpus
    work = tmp_path / "in"
    shutil.copytree(clean, work / "speech")
    bad = work / "speech" / "spk0"
    (bad / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(bad / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(bad / "silent.wav", np.zeros(30000, np.float32), 16000)
    sf.write(bad / "short.wav", 0.1 * np.ones(4000, np.float32), 16000)
    info = _build(work / "speech", noise, tmp_path / "out")
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in info["skipped"]}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "silent.wav", "short.wav"}
    assert "unreadable" in reasons["corrupt.wav"] and "silent" in reasons["silent.wav"]
    assert "too short" in reasons["short.wav"]


def test_nothing_usable_exits_nonzero_with_reason(ray_session, tiny_corpus, tmp_path, capsys):
    _, noise = tiny_corpus
    (tmp_path / "speech" / "a").mkdir(parents=True)
    sf.write(tmp_path / "speech" / "a" / "silent.wav", np.zeros(30000, np.float32), 16000)
    code = main(["build", "--clean", str(tmp_path / "speech"), "--noise", str(noise), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "no usable clean speech" in capsys.readouterr().err


def test_eval_only_float16_build_via_cli(ray_session, tiny_corpus, tmp_path):
    clean, noise = tiny_corpus
    out = tmp_path / "eval"
    args = ["build", "--clean", str(clean), "--noise", str(noise), "--out", str(out), "--snr", "0",
            "--split", "0", "0", "1", "--dtype", "float16", "--noises-per-clean", "1"]
    assert main(args) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"]["train"]["patches"] == 0 and info["splits"]["test"]["patches"] > 0
    assert not (out / "train").exists()
    table = _patches(out, "test")
    assert store.decode_column(table, "clean_mag").dtype == np.float16
    # an unfinished dataset is refused, and --overwrite replaces it
    info["complete"] = False
    (out / "dataset.json").write_text(json.dumps(info))
    assert main(args) == 1
    assert main([*args, "--overwrite"]) == 0


def test_killed_worker_is_retried_and_dataset_is_identical(built, tiny_corpus, tmp_path):
    out, _ = built
    clean, noise = tiny_corpus
    marker = tmp_path / "killed"
    other = tmp_path / "retried"
    _build(clean, noise, other, fault_injection={"marker": str(marker)})
    assert marker.exists()  # a worker process really died mid-build ...
    for split in ("train", "val", "test"):  # ... and no patch row is missing or duplicated
        assert _patches(out, split).equals(_patches(other, split))


def test_build_command_starts_its_local_ray_without_dashboard(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(build, "build_dataset", lambda cfg, **kwargs: calls.append(kwargs))
    assert main(["build", "--clean", str(tmp_path), "--noise", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert calls == [{"overwrite": False, "dashboard": False}]


def test_several_clean_folders_combine_with_speakers_named_per_folder(ray_session, tiny_corpus, tmp_path):
    """Two corpora whose speaker folders have the same names stay different speakers, and a
    folder of symlinks to speaker folders is read like the folders themselves."""
    clean, noise = tiny_corpus
    second = tmp_path / "other" / "speech"
    second.mkdir(parents=True)
    for speaker in sorted(p for p in clean.iterdir() if p.is_dir()):
        (second / speaker.name).symlink_to(speaker, target_is_directory=True)
    out = tmp_path / "ds"
    assert main(["build", "--clean", str(clean), str(second), "--noise", str(noise), "--out", str(out),
                 "--snr", "0", "--noises-per-clean", "1"]) == 0
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    own = {p.name for p in clean.iterdir() if p.is_dir()}
    label = clean.parent.name
    assert set(manifest.speaker) == {f"{label}/speech/{s}" for s in own} | {f"other/speech/{s}" for s in own}
    assert (manifest.groupby("speaker").split.nunique() == 1).all()
    config = json.loads((out / "dataset.json").read_text())["config"]
    assert config["clean_dir"] == [str(clean.resolve()), str(second.resolve())]


VARIETY_ARGS = ["--snr-range", "-5", "20", "--mixtures-per-clean", "3", "--simulate-rooms", "0.4", "--rir-prob", "0.4",
                "--mic-eq", "0.5", "--clip", "0.2", "--noise-transforms", "0.5", "--synthetic-noise", "0.4",
                "--speech-gaps", "0.5", "--noise-speed", "0.5"]


def test_varied_build_records_every_draw_and_re_renders_whatever_the_parallelism(ray_session, tiny_corpus, tmp_path):
    """Acceptance of the variety options: the manifest holds every drawn parameter, the
    measured SNR is the drawn one, a bad RIR is skipped with its reason, and the same
    seed gives the same dataset however the files are cut."""
    clean, noise = tiny_corpus
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    for k, rate in enumerate((16000, 44100)):
        h = np.zeros(rate // 4, np.float32)
        h[20 + k], h[rate // 40], h[rate // 10] = 0.9, 0.3, 0.1
        sf.write(rirs / f"room{k}.wav", h, rate)
    sf.write(rirs / "silent.wav", np.zeros(4000, np.float32), 16000)
    args = ["build", "--clean", str(clean), "--noise", str(noise), "--rir", str(rirs), *VARIETY_ARGS]
    out, other = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(other), "--rows-per-file", "5"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert [s["path"].rsplit("/", 1)[-1] for s in info["skipped"]] == ["silent.wav"]
    assert "silent" in info["skipped"][0]["reason"]
    assert info["config"]["snr_range"] == [-5.0, 20.0] and info["config"]["variety"]["rooms"] == 0.4
    manifest = dataset.load_manifest(out)
    assert {"rir_kind", "rir_path", "room_dims", "rt60", "mic_sos", "noise_sos", "clip_level", "noise_kind",
            "babble_paths", "mod_depth", "noise2_path", "target", "speech_gaps", "noise_speed"} <= set(manifest[0])
    assert any(r["speech_gaps"] for r in manifest) and not any(r["speech_gaps"] for r in manifest if r["split"] != "train")
    assert {r["rir_kind"] for r in manifest} == {"", "file", "room"}
    assert all(abs(r["measured_snr_db"] - r["snr_db"]) < 0.1 for r in manifest)
    a = pq.read_table(out / "manifest.parquet")
    assert a.equals(pq.read_table(other / "manifest.parquet"))
    for split in ("train", "val", "test"):
        assert _patches(out, split).equals(_patches(other, split))
    row = next(r for r in manifest if r["rir_kind"] == "room")
    stored = _patches(out, row["split"])
    stored = stored.filter(stored["mixture_id"].to_numpy() == row["mixture_id"])
    np.testing.assert_array_equal(store.decode_column(stored, "noisy_mag"),
                                  dsp.mixture_patches(dataset.render_row(row))["noisy_mag"])
