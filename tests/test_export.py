"""ONNX export and runtime, hop-by-hop streaming, PCM through a pipe, parallel folders."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speech_like

from speech_enhance.cli import main
from speech_enhance.model import build_model, save_model
from speech_enhance.model.enhance import (
    StreamingEnhancer,
    enhance_array,
    enhance_paths,
    enhance_paths_parallel,
    latency_ms,
    stream_pcm,
)
from speech_enhance.model.export import OnnxNet, export_onnx, load_backend
from speech_enhance.model.net import ARCHITECTURES, load_model, post_filter

pytest.importorskip("onnxruntime")


def _trained_like(arch: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(arch, **options)
    net.train()
    net(torch.rand(2, net.input_channels, 257, 64) * 5)  # non-trivial BatchNorm statistics
    return net.eval()


def _noisy_speech(seconds: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(4)
    clean = speech_like(rng, seconds, 16000, 140)
    return (clean + 0.05 * rng.standard_normal(len(clean))).astype(np.float32)


def test_a_post_filter_saved_with_the_model_runs_in_enhance_streaming_and_the_onnx_graph(tmp_path, capsys):
    net = _trained_like("crn", level_db=-20.0)
    x = _noisy_speech(2.0)
    plain = enhance_array(net, x)
    net.post_filter = 0.1
    save_model(tmp_path / "m.pth", net)
    loaded, _ = load_model(tmp_path / "m.pth")
    assert loaded.post_filter == 0.1
    filtered = enhance_array(loaded, x)
    mag = torch.rand(1, 1, 257, 120) * 3
    with torch.no_grad():
        shaped = loaded(mag)
        loaded.post_filter = 0.0
        raw = loaded(mag)
        loaded.post_filter = 0.1
    torch.testing.assert_close(shaped, post_filter(raw, 0.1))
    assert torch.equal(loaded.train().output(raw), raw)  # training sees the raw mask
    loaded.eval()
    assert float(np.sum(filtered ** 2)) < float(np.sum(plain ** 2))  # it removes more
    stream = StreamingEnhancer(loaded, 1, segment=128)  # applied frame by frame as well
    out = np.concatenate([stream.push(x[None, i:i + 128]) for i in range(0, len(x), 128)] + [stream.finish()], 1)
    np.testing.assert_allclose(out[0], filtered, atol=1e-4)
    assert main(["export", str(tmp_path / "m.pth"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    runtime, meta = load_backend(tmp_path / "m.onnx", "onnx")
    assert meta["post_filter"] == 0.1
    np.testing.assert_allclose(enhance_array(runtime, x), filtered, atol=1e-4)  # in the graph
    off, _ = load_backend(tmp_path / "m.pth", "onnx", post_filter=0)  # exported again without it
    np.testing.assert_allclose(enhance_array(off, x), plain, atol=1e-4)
    with pytest.raises(ValueError, match="part of the exported graph"):
        load_backend(tmp_path / "m.onnx", "onnx", post_filter=0)
    sf.write(tmp_path / "x.wav", x, 16000, subtype="FLOAT")
    assert main(["enhance", str(tmp_path / "x.wav"), "--model", str(tmp_path / "m.pth"), "--out",
                 str(tmp_path / "a"), "--jobs", "1"]) == 0
    assert "post-filter 0.1 (the model's default" in capsys.readouterr().out
    np.testing.assert_allclose(sf.read(tmp_path / "a" / "x.wav")[0], filtered, atol=1e-4)
    assert main(["enhance", str(tmp_path / "x.wav"), "--model", str(tmp_path / "m.pth"), "--out",
                 str(tmp_path / "b"), "--post-filter", "-1"]) == 1
    assert "--post-filter must be 0 (off) or a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_onnx_runtime_matches_pytorch(arch, tmp_path):
    net = _trained_like(arch)
    export_onnx(net, tmp_path / "m.onnx", {"strength": 0.8})
    runtime = OnnxNet(tmp_path / "m.onnx")
    assert runtime.meta["strength"] == 0.8 and runtime.meta["model_config"]["arch"] == arch
    for frames in (1, 64, 301):  # the frame count is dynamic
        mag = torch.rand(1, 1, 257, frames) * 3
        with torch.no_grad():
            np.testing.assert_allclose(runtime(mag).numpy(), net(mag).numpy(), atol=1e-4)
    x = _noisy_speech()
    np.testing.assert_allclose(enhance_array(runtime, x, 0.9), enhance_array(net, x, 0.9), atol=1e-4)


def _assert_onnx_runs_as_net(runtime: OnnxNet, net: torch.nn.Module, whole: torch.Tensor) -> None:
    """``runtime`` gives ``net``'s masks on ``whole``, and streamed 128 samples at a time
    through its state, ``net``'s whole-file enhancement of 2 s of noisy speech."""
    with torch.no_grad():
        np.testing.assert_allclose(runtime(whole).numpy(), net(whole).numpy(), atol=1e-4)
    x = _noisy_speech(2.0)
    stream = StreamingEnhancer(runtime, 1, segment=128)
    out = np.concatenate([stream.push(x[None, i:i + 128]) for i in range(0, len(x), 128)] + [stream.finish()], 1)
    np.testing.assert_allclose(out[0], enhance_array(net, x), atol=1e-4)


@pytest.mark.parametrize(("mean_norm_s", "lookahead", "floor_s", "cepstrum", "layers", "fullres", "level_db"),
                         [(0.0, 0, 0.0, 0, 1, 0, 0.0), (0.5, 0, 0.0, 0, 1, 0, 0.0), (0.5, 2, 0.0, 0, 1, 0, 0.0),
                          (0.5, 0, 1.0, 0, 1, 0, 0.0), (0.5, 0, 0.0, 1, 1, 0, 0.0), (0.5, 0, 0.0, 0, 2, 0, 0.0),
                          (0.5, 0, 0.0, 0, 1, 8, 0.0), (0.5, 0, 0.0, 0, 1, 8, -10.0)])
def test_streaming_network_streams_through_onnx_with_its_state(mean_norm_s, lookahead, floor_s, cepstrum, layers,
                                                               fullres, level_db):
    net = _trained_like("crn", mean_norm_s=mean_norm_s, lookahead=lookahead, floor_s=floor_s, cepstrum=cepstrum,
                        layers=layers, fullres=fullres, level_db=level_db)  # -10 dBFS raises both inputs below
    runtime = OnnxNet(export_onnx(net, None))
    assert runtime.streamable
    assert len(runtime.meta["state_shapes"]) == (5 + bool(fullres) + bool(mean_norm_s) + 2 * bool(floor_s)
                                                 + 2 * bool(level_db))
    _assert_onnx_runs_as_net(runtime, net, torch.rand(1, 1, 257, 301) * 3)  # past the running mean's 64-frame blocks


def test_a_crn_with_a_band_gru_streams_through_onnx_with_its_state():
    net = _trained_like("crn", mean_norm_s=0.5, fullres=8, level_db=-20.0, band_gru=16)
    torch.nn.init.normal_(net.band_out.weight, std=0.1)  # trained-like: the band path is not zero
    runtime = OnnxNet(export_onnx(net, None))
    assert runtime.meta["state_shapes"][-1] == [1, 65, 16]
    _assert_onnx_runs_as_net(runtime, net, torch.rand(1, 1, 257, 301) * 3)


def test_a_network_that_reads_the_phase_takes_it_through_onnx_and_streams():
    net = _trained_like("crn", mean_norm_s=0.5, fullres=4, level_db=-20.0, phase=1)
    runtime = OnnxNet(export_onnx(net, None))
    assert runtime.input_channels == 2 and runtime.input_name == "noisy_mag_phase"
    _assert_onnx_runs_as_net(runtime, net, torch.cat([torch.rand(1, 1, 257, 301) * 3,
                                                      (torch.rand(1, 1, 257, 301) - 0.5) * 6], dim=1))


@pytest.mark.parametrize("block", [128, 50])
def test_hop_by_hop_stream_equals_offline(block):
    """The real-time path: one hop (or less) in per call, state carried, offline result out."""
    net = _trained_like("crn")
    x = _noisy_speech(2.0)
    stream = StreamingEnhancer(net, 1, segment=128)
    parts = [stream.push(x[None, i:i + block]) for i in range(0, len(x), block)]
    assert sum(p.shape[1] for p in parts) >= len(x) - 2000  # output keeps up with input, 40 ms behind
    out = np.concatenate([*parts, stream.finish()], axis=1)[0]
    np.testing.assert_allclose(out, enhance_array(net, x), atol=1e-4)
    assert latency_ms(net, 128) == pytest.approx(40.0)
    assert latency_ms(_trained_like("crn", lookahead=2), 128) == pytest.approx(56.0)  # 2 frames of 8 ms more
    assert latency_ms(_trained_like("unet"), 128) == pytest.approx(8 + 24 * 8)
    assert latency_ms(_trained_like("mask_cnn"), 128) == pytest.approx(8 + 10 * 8)


def test_pcm_pipe_gives_the_offline_result():
    net = _trained_like("crn")
    x = _noisy_speech(1.5)
    pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2")
    sink = io.BytesIO()
    assert stream_pcm(net, io.BytesIO(pcm.tobytes()), sink, strength=0.9) == len(x)
    out = np.frombuffer(sink.getvalue(), "<i2").astype(np.float32) / 32768
    expected = enhance_array(net, pcm.astype(np.float32) / 32768, 0.9)
    assert len(out) == len(x)
    np.testing.assert_allclose(out, expected, atol=3 / 32768)


def test_export_command_and_onnx_backend_in_enhance(tmp_path, capsys):
    net = _trained_like("crn")
    save_model(tmp_path / "m.pth", net, strength=0.75)
    assert main(["export", str(tmp_path / "m.pth"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "largest mask difference" in capsys.readouterr().out
    sf.write(tmp_path / "x.wav", _noisy_speech(), 16000, subtype="FLOAT")
    for name, model, backend in (("torch", "m.pth", "torch"), ("onnx", "m.onnx", "onnx"), ("mem", "m.pth", "onnx")):
        assert main(["enhance", str(tmp_path / "x.wav"), "--model", str(tmp_path / model), "--backend", backend,
                     "--out", str(tmp_path / name)]) == 0
        assert "strength 0.75" in capsys.readouterr().out
    ref = sf.read(tmp_path / "torch" / "x.wav")[0]
    for name in ("onnx", "mem"):
        np.testing.assert_allclose(sf.read(tmp_path / name / "x.wav")[0], ref, atol=1e-4)
    assert main(["enhance", str(tmp_path / "x.wav"), "--model", str(tmp_path / "m.onnx"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "--backend onnx" in capsys.readouterr().err


def test_folder_in_parallel_processes_equals_one_by_one(tmp_path):
    net = _trained_like("crn")
    save_model(tmp_path / "m.pth", net)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        sf.write(folder / f"f{k}.wav", _noisy_speech(1.0 + k * 0.3), 16000, subtype="FLOAT")
    (folder / "broken.wav").write_bytes(b"nope")
    lines = []
    import functools

    load = functools.partial(_load, str(tmp_path / "m.pth"))
    parallel = enhance_paths_parallel(load, [str(folder)], tmp_path / "par", jobs=2, log=lines.append)
    serial = enhance_paths(net, [str(folder)], tmp_path / "ser", log=lambda *_: None)
    assert sorted(r.path for r in parallel) == sorted(r.path for r in serial)
    assert [r.path.rsplit("/", 1)[-1] for r in parallel if r.error] == ["broken.wav"]
    assert sorted(line.split("]")[0] for line in lines) == ["[1/4", "[2/4", "[3/4", "[4/4"]
    for k in range(3):
        np.testing.assert_allclose(sf.read(tmp_path / "par" / "in" / f"f{k}.wav")[0],
                                   sf.read(tmp_path / "ser" / "in" / f"f{k}.wav")[0], atol=1e-5)


def _load(path: str):
    return load_backend(path, "torch", 1)[0]


def test_parallel_onnx_workers_take_the_graph_exported_once(tmp_path, monkeypatch):
    net = _trained_like("crn")
    save_model(tmp_path / "m.pth", net)
    for k in range(2):
        sf.write(tmp_path / f"x{k}.wav", _noisy_speech(1.0 + k), 16000, subtype="FLOAT")
    import speech_enhance.model.enhance as enhance_module
    from speech_enhance.model import export

    loads = []
    real = enhance_module.enhance_paths_parallel

    def spy(load, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        loads.append(load)
        return real(load, *args, **kwargs)

    monkeypatch.setattr(enhance_module, "enhance_paths_parallel", spy)
    files = [str(tmp_path / f"x{k}.wav") for k in range(2)]
    assert main(["enhance", *files, "--model", str(tmp_path / "m.pth"), "--backend", "onnx", "--jobs", "2",
                 "--out", str(tmp_path / "out")]) == 0
    for k in range(2):
        expected = enhance_array(net, sf.read(tmp_path / f"x{k}.wav", dtype="float32")[0])
        np.testing.assert_allclose(sf.read(tmp_path / "out" / f"x{k}.wav")[0], expected, atol=1e-4)

    def no_export(*_, **__):  # noqa: ANN002, ANN003
        raise AssertionError("a worker exported the model again")

    monkeypatch.setattr(export, "export_onnx", no_export)
    assert isinstance(loads[0](), OnnxNet)  # what each worker runs: no second export
