"""The pretrained model shipped in the package: `enhance` uses it when no --model is given."""

import numpy as np
import soundfile as sf
from conftest import speech_like

from speech_enhance.cli import main
from speech_enhance.model.enhance import enhance_array
from speech_enhance.model.net import complexity, load_model
from speech_enhance.pretrained import default_model


def test_shipped_model_loads_within_the_budget():
    model, meta = load_model(default_model())
    assert meta["model_config"]["arch"] == "crn" and model.streamable
    assert complexity(model)["parameters"] <= 1_000_000
    assert default_model().stat().st_size < 5 * 2**20
    assert 0 < meta.get("strength", 1.0) <= 1


def test_enhance_without_model_uses_and_names_the_pretrained_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = speech_like(rng, 2.0, 16000, 130)
    noisy = clean + 0.05 * rng.standard_normal(len(clean)).astype(np.float32)
    sf.write(tmp_path / "noisy.wav", noisy, 16000)
    assert main(["enhance", str(tmp_path / "noisy.wav"), "--out", str(tmp_path / "out")]) == 0
    assert "pretrained model" in capsys.readouterr().out
    enhanced, rate = sf.read(tmp_path / "out" / "noisy.wav")
    assert rate == 16000 and len(enhanced) == len(noisy)
    # It removes noise: less energy where the stand-in speech is silent.
    silent = np.abs(clean) < 1e-4
    assert np.mean(enhanced[silent] ** 2) < 0.5 * np.mean(noisy[silent] ** 2)


def test_shipped_model_enhances_a_quiet_recording_as_a_louder_one():
    """Its input is brought to -20 dBFS (``level_db``): at -30 and -55 dBFS it draws the same
    mask, where a network fed raw log magnitudes loses the quiet one's soft bins to the floor."""
    model, meta = load_model(default_model())
    assert meta["model_config"]["level_db"] == -20
    rng = np.random.default_rng(1)
    clean = speech_like(rng, 2.0, 16000, 130)
    noisy = clean + 0.05 * rng.standard_normal(len(clean)).astype(np.float32)
    noisy *= 10 ** (-30 / 20) / np.sqrt(np.mean(noisy ** 2))
    louder, quieter = (enhance_array(model, noisy * gain) / gain for gain in (1.0, 10 ** (-25 / 20)))
    np.testing.assert_allclose(quieter, louder, atol=1e-4 * np.abs(louder).max())
