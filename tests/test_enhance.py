import resource

import numpy as np
import pytest
import soundfile as sf
import torch

from speech_enhance.cli import main
from speech_enhance.model import build_model, save_model
from speech_enhance.model.enhance import StreamingEnhancer, enhance_array, enhance_at_strengths, enhance_file
from speech_enhance.model.net import ARCHITECTURES


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("mask_cnn", [8, 8, 8, 8])
    m.train()
    m(torch.rand(2, 1, 257, 64) * 5)  # non-trivial BatchNorm statistics
    return m.eval()


@pytest.mark.parametrize(("arch", "options"), [(a, {}) for a in sorted(ARCHITECTURES)]
                         + [("crn", {"lookahead": 3}), ("crn", {"phase": 1})])
@pytest.mark.parametrize("block", [7000, 333])
def test_chunked_streaming_equals_whole_file(arch, options, block):
    """Each architecture, chunked with the context it declares (a recurrent one carrying
    its state, one with look-ahead handing its masks over late), gives the whole-file result."""
    torch.manual_seed(0)
    net = build_model(arch, **options)
    net.train()
    net(torch.rand(2, net.input_channels, 257, 64) * 5)  # non-trivial BatchNorm statistics
    net.eval()
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 16000 * 3 + 77))).astype(np.float32)
    whole = enhance_array(net, x, strength=0.9)
    stream = StreamingEnhancer(net, 2, strength=0.9, segment=128 * 40)
    parts = [stream.push(x[:, i:i + block]) for i in range(0, x.shape[1], block)] + [stream.finish()]
    chunked = np.concatenate(parts, axis=1)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=1e-4)


def test_several_strengths_at_once_equal_one_at_a_time(model):
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    together = enhance_at_strengths(model, x, [1.0, 0.7])
    np.testing.assert_array_equal(together[0], enhance_array(model, x))
    np.testing.assert_array_equal(together[1], enhance_array(model, x, strength=0.7))


def test_strength_zero_returns_the_input(model):
    x = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    np.testing.assert_allclose(enhance_array(model, x, strength=0.0), x, atol=1e-4)
    with pytest.raises(ValueError):
        enhance_array(model, x, strength=1.5)


def test_file_at_44k_stereo_keeps_rate_channels_and_length(model, tmp_path):
    rate, frames = 44100, 44100 * 3 + 11
    sf.write(tmp_path / "in.flac", 0.1 * np.random.default_rng(2).standard_normal((frames, 2)), rate)
    result = enhance_file(model, tmp_path / "in.flac", tmp_path / "out" / "in.flac")
    assert result.error is None
    info = sf.info(tmp_path / "out" / "in.flac")
    assert (info.samplerate, info.channels, info.frames) == (rate, 2, frames)


def test_long_file_in_bounded_memory(model, tmp_path):
    """10 minutes of audio: peak memory grows far less than the decoded file would."""
    rate, seconds = 16000, 600
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        rng = np.random.default_rng(3)
        for _ in range(seconds // 60):
            f.write(0.1 * rng.standard_normal(rate * 60))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = enhance_file(model, path, tmp_path / "out.wav")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.error is None and sf.info(tmp_path / "out.wav").frames == rate * seconds
    # the whole file as float32 STFT + spectra would take > 1 GiB; one segment takes ~100 MiB
    assert grown_mib < 400


def test_cli_reports_unreadable_inputs_and_fails(model, tmp_path, capsys):
    save_model(tmp_path / "m.pth", model)
    good = tmp_path / "in" / "good.wav"
    good.parent.mkdir()
    sf.write(good, 0.1 * np.ones(16000), 16000)
    (tmp_path / "in" / "bad.wav").write_bytes(b"not audio")
    code = main(["enhance", str(tmp_path / "in"), "--model", str(tmp_path / "m.pth"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert (tmp_path / "o" / "in" / "good.wav").exists()
    captured = capsys.readouterr()
    assert "bad.wav" in captured.err and "real-time factor" in captured.out


def test_cli_applies_the_model_files_default_strength_unless_told(model, tmp_path, capsys):
    save_model(tmp_path / "m.pth", model, strength=0.0)  # strength 0: the input, unchanged
    x = 0.1 * np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, 16000, subtype="FLOAT")
    args = ["enhance", str(tmp_path / "x.wav"), "--model", str(tmp_path / "m.pth")]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert "strength 0.0 (the model's default" in capsys.readouterr().out
    np.testing.assert_allclose(sf.read(tmp_path / "default" / "x.wav")[0], x, atol=1e-4)
    assert main([*args, "--out", str(tmp_path / "full"), "--strength", "1"]) == 0
    assert np.max(np.abs(sf.read(tmp_path / "full" / "x.wav")[0] - x)) > 1e-3
