import numpy as np
import pytest
import soundfile as sf

from speech_enhance.pipeline import audio, dsp


def test_loads_any_rate_and_channels_as_16k_mono(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left * 0.5], axis=1)
    for ext in ("wav", "flac", "ogg"):
        path = tmp_path / f"x.{ext}"
        sf.write(path, stereo, rate)
        x = audio.load_audio(path)
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - 16000) <= 1
        # channels averaged: amplitude 0.375, frequency preserved
        assert abs(np.max(np.abs(x[2000:-2000])) - 0.375) < 0.02
        spectrum = np.abs(np.fft.rfft(x))
        assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) < 2


def test_int_pcm_is_scaled_to_float(tmp_path):
    path = tmp_path / "int.wav"
    sf.write(path, (np.ones(16000) * 16384).astype(np.int16), 16000, subtype="PCM_16")
    assert abs(audio.load_audio(path).max() - 0.5) < 1e-3


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "unreadable"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "empty"),
        (lambda p: sf.write(p, np.zeros(20000, np.float32), 16000), "silent"),
        (lambda p: sf.write(p, np.full(20000, np.nan, np.float32), 16000, subtype="FLOAT"), "non-finite"),
    ],
)
def test_bad_files_raise_with_reason_and_path(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(audio.AudioError) as info:
        audio.load_audio(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_too_short_clean_is_rejected(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, 0.1 * np.ones(dsp.MIN_PATCH_SAMPLES - 10, np.float32), 16000)
    audio.load_audio(path)  # fine as noise
    with pytest.raises(audio.AudioError, match="too short"):
        audio.load_clean(path)


def test_discovery_is_recursive_sorted_and_audio_only(tmp_path):
    for rel in ("b/2.wav", "a/1.flac", "a/deep/3.ogg", "notes.txt", "a/list.tsv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in audio.discover_audio(tmp_path)]
    assert found == ["a/1.flac", "a/deep/3.ogg", "b/2.wav"]


def test_speaker_from_parent_folder_or_regex(tmp_path):
    path = tmp_path / "p225" / "p225_001.wav"
    assert audio.speaker_of(path, tmp_path) == "p225"
    flat = tmp_path / "spk7-utt3.wav"
    assert audio.speaker_of(flat, tmp_path, r"spk(\d+)-") == "7"
    with pytest.raises(audio.AudioError, match="does not match"):
        audio.speaker_of(flat, tmp_path, r"speaker(\d+)")


def test_discovery_follows_symlinked_folders_once(tmp_path):
    """A folder of links to speaker folders (how people pick part of a corpus) is searched,
    and a link cycle does not loop."""
    from speech_enhance.pipeline.audio import discover_audio

    corpus = tmp_path / "corpus"
    for speaker in ("a", "b"):
        (corpus / speaker).mkdir(parents=True)
        sf.write(corpus / speaker / "x.wav", np.zeros(1600, np.float32), 16000)
    picked = tmp_path / "picked"
    picked.mkdir()
    (picked / "a").symlink_to(corpus / "a", target_is_directory=True)
    (picked / "a" / "loop").symlink_to(picked, target_is_directory=True)  # a cycle back up
    assert [p.relative_to(picked).as_posix() for p in discover_audio(picked)] == ["a/x.wav"]


def test_folder_labels_tell_corpora_apart():
    from speech_enhance.pipeline.audio import folder_labels

    assert folder_labels(["/data/dev/speech", "/data/extra/speech"]) == ["dev/speech", "extra/speech"]
    assert folder_labels(["/data/vctk", "/data/libri"]) == ["vctk", "libri"]
