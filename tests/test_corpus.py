import hashlib

import numpy as np
import pytest

from speech_enhance.cli import main
from speech_enhance.pipeline import audio
from speech_enhance.pipeline.corpus import NOISE_TYPES, VOICES, make_corpus, make_noise


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("default_corpus")
    counts = make_corpus(root, seed=0)
    return root, counts


def test_corpus_has_voices_and_noise_types_and_is_small(corpus):
    root, counts = corpus
    speakers = {p.parent.name for p in (root / "speech").rglob("*.wav")}
    noise_types = {p.parent.name for p in (root / "noise").rglob("*.wav")}
    assert len(speakers) == len(VOICES) >= 8
    assert noise_types == set(NOISE_TYPES) and len(noise_types) >= 6
    assert counts["speech_files"] >= 8 * 4
    size = sum(p.stat().st_size for p in root.rglob("*.wav"))
    assert size < 10 * 2**20
    for path in (root / "speech").rglob("*.wav"):
        x = audio.load_clean(path)  # every utterance is usable: long enough, not silent
        assert 1.0 < len(x) / 16000 < 6.0


def test_voices_differ(corpus):
    root, _ = corpus
    pitches = []
    for voice in VOICES[:4]:
        x = audio.load_audio(next((root / "speech" / voice.name).glob("*.wav")))
        spectrum = np.abs(np.fft.rfft(x))
        pitches.append(np.sum(spectrum * np.arange(len(spectrum))) / np.sum(spectrum) / len(spectrum))
    assert len({round(p, 4) for p in pitches}) == 4


def test_corpus_is_deterministic(corpus, tmp_path):
    root, _ = corpus
    make_corpus(tmp_path, seed=0)
    assert _digest(tmp_path) == _digest(root)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum", "clicks", "modulated"])
def test_noise_spectra_have_expected_shape(kind):
    x = make_noise(kind, np.random.default_rng(0), 2.0)
    assert x.dtype == np.float32 and abs(np.max(np.abs(x)) - 0.5) < 1e-6
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    low, high = spectrum[20:400].mean(), spectrum[10000:16000].mean()  # ~10-200 Hz vs 5-8 kHz
    if kind in ("pink", "brown", "hum"):
        assert low > 10 * high
    if kind == "white":
        assert 0.3 < low / high < 3


@pytest.mark.timeout(300)
def test_cli_corpus_then_build(ray_session, tmp_path):
    assert main(["corpus", str(tmp_path / "corpus")]) == 0
    out = tmp_path / "data"
    assert main(["build", "--clean", str(tmp_path / "corpus/speech"), "--noise", str(tmp_path / "corpus/noise"),
                 "--out", str(out), "--snr", "0", "--noises-per-clean", "1"]) == 0
    for split in ("train", "val", "test"):
        assert list((out / split).glob("*.parquet"))
