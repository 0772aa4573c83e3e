"""ONNX export of a trained network, and an ONNX Runtime stand-in for it in `enhance`.

The exported graph is the network only: noisy STFT magnitude [1, 1, 257, frames] in
(``noisy_mag``; with the noisy phase in radians as a second channel, ``noisy_mag_phase``,
for a network that reads it), mask out, with a dynamic frame count; the STFT and iSTFT
stay outside, as every deployment has its own. A streaming network (``streamable``) is exported as one step of its stream:
its state goes in and comes out as extra tensors (``state_i`` → ``next_state_i``), zeros
at the start, so the same graph enhances a whole file in one call or a stream frame by
frame. A network with look-ahead (``model_config["lookahead"]`` frames) gives each mask
that many frames late: feed that many frames of zero magnitude at the end to flush it.
The model's settings (architecture, STFT, default strength, post-filter) ride along as ONNX
metadata (``speech_enhance``, JSON); the post-filter is part of the graph.
"""

from __future__ import annotations

import io
import json
import os
import warnings

import numpy as np
import torch
from torch import nn

from speech_enhance.model.net import (
    MaskNet,
    build_model,
    check_post_filter,
    load_model,
    model_config,
    stream_whole,
)
from speech_enhance.pipeline import dsp

OPSET = 18
METADATA_KEY = "speech_enhance"


class _Step(nn.Module):
    """The network as ONNX sees it: (magnitude, *state) → (mask, *next state)."""

    def __init__(self, net: MaskNet):
        super().__init__()
        self.net = net

    def forward(self, noisy_mag: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.net.streamable:
            return (self.net(noisy_mag),)
        mask, new = self.net.stream(noisy_mag, self.net.unflat_state(list(state)))
        return (mask, *self.net.flat_state(new))


def export_onnx(model: MaskNet, path: str | os.PathLike, meta: dict | None = None, frames: int = 64) -> bytes:
    """Write ``model`` as ONNX to ``path`` (None: only return the bytes); returns the bytes."""
    import onnx

    net = getattr(model, "module", model).eval()
    state = net.zero_state() if net.streamable else []
    names = [f"state_{i}" for i in range(len(state))]
    step = _Step(net).eval()  # a new module starts in training mode: BatchNorm must be frozen
    example = torch.rand(1, net.input_channels, dsp.N_BINS, frames) + 0.01
    source = "noisy_mag" if net.input_channels == 1 else "noisy_mag_phase"
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) is deprecated in favour of torch.export,
        # which cannot yet trace these networks' recurrent streams; its warnings are noise here.
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(
            step, (example, *state), buffer, input_names=[source, *names],
            output_names=["mask", *[f"next_{n}" for n in names]],
            dynamic_axes={source: {3: "frames"}, "mask": {3: "frames"}}, opset_version=OPSET, dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    info = {"model_config": model_config(net), "sample_rate": dsp.SAMPLE_RATE,
            "stft": {"n_fft": dsp.N_FFT, "hop": dsp.HOP, "window": "hann"},
            "state_shapes": [list(t.shape) for t in state], "post_filter": float(net.post_filter),
            **{k: v for k, v in (meta or {}).items() if k in ("strength", "epoch", "val_loss")}}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    data = proto.SerializeToString()
    if path is not None:
        tmp = f"{path}.part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return data


class OnnxNet:
    """An exported network run by ONNX Runtime, usable wherever `enhance` takes a
    :class:`~speech_enhance.model.net.MaskNet` (call, ``stream``, declared context)."""

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = model if isinstance(model, bytes) else str(model)
        self.source = source  # what a worker process rebuilds it from, without exporting again
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{model if not isinstance(model, bytes) else 'ONNX model'}: not exported by speech-enhance")
        self.meta = json.loads(props[METADATA_KEY])
        # The declared context can depend on the config (a CRN's look-ahead): read it off the network.
        net = build_model(**self.meta["model_config"])
        self.name, self.past_frames, self.future_frames = net.name, net.past_frames, net.future_frames
        self.input_channels = net.input_channels
        self.post_filter = float(self.meta.get("post_filter", 0.0))  # in the graph; read here to report it
        self.input_name = self.session.get_inputs()[0].name
        self.streamable = bool(self.meta["state_shapes"])
        self._zero = [np.zeros(s, np.float32) for s in self.meta["state_shapes"]]

    def eval(self) -> OnnxNet:
        return self

    def _run(self, noisy_mag: torch.Tensor, state: list[np.ndarray]) -> tuple[torch.Tensor, list[np.ndarray]]:
        feeds = {self.input_name: np.ascontiguousarray(noisy_mag.numpy(), dtype=np.float32)}
        feeds.update({f"state_{i}": s for i, s in enumerate(state)})
        mask, *new = self.session.run(None, feeds)
        return torch.from_numpy(mask), new

    def __call__(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        if not self.streamable:
            return self._run(noisy_mag, self._zero)[0]
        return stream_whole(self.stream, noisy_mag, self.future_frames)  # as the network's forward

    def stream(self, noisy_mag: torch.Tensor, state: list[np.ndarray] | None) -> tuple[torch.Tensor, list]:
        return self._run(noisy_mag, self._zero if state is None else state)


def load_backend(path: str | os.PathLike, backend: str = "torch", threads: int | None = None,
                 post_filter: float | None = None) -> tuple[object, dict]:
    """The model at ``path`` (a model file, or a ``.onnx`` file for the onnx backend) ready
    for `enhance` on ``backend`` (torch | onnx), and its metadata; a top-level function, so
    that worker processes can be handed it. ``post_filter`` replaces the file's β (None: keep it)."""
    if backend == "onnx":
        return load_onnx_or_export(path, threads, post_filter)
    if backend != "torch":
        raise ValueError(f"--backend must be torch or onnx, got {backend!r}")
    if str(path).endswith(".onnx"):
        raise ValueError(f"{path}: an ONNX file runs with --backend onnx")
    if threads:
        torch.set_num_threads(threads)
    return _with_post_filter(*load_model(path), post_filter)


def _with_post_filter(model: MaskNet, meta: dict, post_filter: float | None) -> tuple[MaskNet, dict]:
    if post_filter is not None:
        model.post_filter = check_post_filter(post_filter, "--post-filter")
    return model, meta


def load_onnx_or_export(path: str | os.PathLike, threads: int | None = None,
                        post_filter: float | None = None) -> tuple[OnnxNet, dict]:
    """An :class:`OnnxNet` from a ``.onnx`` file, or from a model file exported in memory
    (with ``post_filter`` in place of the file's, unless None); and its metadata (as
    :func:`~speech_enhance.model.net.load_model` returns it)."""
    if str(path).endswith(".onnx"):
        net = OnnxNet(path, threads)
        if post_filter is not None and check_post_filter(post_filter, "--post-filter") != net.post_filter:
            raise ValueError(f"{path}: its post-filter ({net.post_filter:g}) is part of the exported graph; "
                             "export the model file again to change it, or give the model file")
        return net, net.meta
    model, meta = _with_post_filter(*load_model(path), post_filter)
    return OnnxNet(export_onnx(model, None, meta), threads), meta
