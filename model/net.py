"""The mask CNN, its variants, and the saved-model format.

What the network sees: ``log(|X| + 1e-3)`` of the noisy STFT magnitude, normalised by a
parameter-free BatchNorm (running mean/variance over the training data, frozen at
inference). Log compression turns the 20 dB spread of mixture levels into a shift and
keeps quiet speech harmonics visible next to loud noise; a *fixed* statistic (rather
than per-utterance normalisation) keeps the output of a chunk independent of the rest
of the file, so long files can be enhanced in pieces. The predicted mask (sigmoid, in
[0, 1]) always multiplies the noisy *linear* magnitude: Enhanced = Mask × Noisy.

All layers are convolutions with same padding, so any number of frames works.
"""

from __future__ import annotations

import io
import os

import torch
from torch import nn

from speech_enhance.pipeline import dsp, storage

FORMAT_VERSION = 1
LOG_EPS = 1e-3


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU())


class MaskCNN(nn.Module):
    """Conv2d(1→32) BN GELU → (32→64) → (64→64) → (64→32) → Conv2d(32→1) Sigmoid.

    Input and output [batch, 1, 257, frames]; ``widths`` sets the four hidden widths."""

    DEFAULT_WIDTHS = (32, 64, 64, 32)

    def __init__(self, widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        self.widths = widths
        self.input_norm = nn.BatchNorm2d(1, affine=False)
        chans = [1, *widths]
        self.encoder = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.head = nn.Sequential(nn.Conv2d(widths[-1], 1, 3, padding=1), nn.Sigmoid())

    def forward(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        """Mask in [0, 1] for a noisy magnitude [batch, 1, 257, frames]."""
        features = self.input_norm(torch.log(noisy_mag + LOG_EPS))
        return self.head(self.encoder(features))


class UNetMask(nn.Module):
    """A small U-Net variant: two stride-2 downsamplings along frequency and time with
    skip connections; same input/output contract as :class:`MaskCNN`."""

    DEFAULT_WIDTHS = (16, 32, 64)

    def __init__(self, widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS):
        super().__init__()
        w = [int(x) for x in widths]
        if len(w) != 3 or min(w) < 1:
            raise ValueError(f"unet takes three positive widths, got {w}")
        self.widths = w
        self.input_norm = nn.BatchNorm2d(1, affine=False)
        self.enc1 = conv_block(1, w[0])
        self.enc2 = nn.Sequential(nn.Conv2d(w[0], w[1], 3, stride=2, padding=1), nn.BatchNorm2d(w[1]), nn.GELU())
        self.enc3 = nn.Sequential(nn.Conv2d(w[1], w[2], 3, stride=2, padding=1), nn.BatchNorm2d(w[2]), nn.GELU())
        self.up2 = nn.ConvTranspose2d(w[2], w[1], 2, stride=2)
        self.dec2 = conv_block(2 * w[1], w[1])
        self.up1 = nn.ConvTranspose2d(w[1], w[0], 2, stride=2)
        self.dec1 = conv_block(2 * w[0], w[0])
        self.head = nn.Sequential(nn.Conv2d(w[0], 1, 1), nn.Sigmoid())

    @staticmethod
    def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # Odd sizes (257 bins, any frame count) lose a row/column when halved: pad back.
        dh, dw = like.shape[-2] - x.shape[-2], like.shape[-1] - x.shape[-1]
        return nn.functional.pad(x, (0, dw, 0, dh))

    def forward(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(torch.log(noisy_mag + LOG_EPS))
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self._fit(self.up2(e3), e2), e2], dim=1))
        d1 = self.dec1(torch.cat([self._fit(self.up1(d2), e1), e1], dim=1))
        return self.head(d1)


ARCHITECTURES = {"mask_cnn": MaskCNN, "unet": UNetMask}


def default_widths(arch: str) -> list[int]:
    """The architecture's default channel widths."""
    return list(_architecture(arch).DEFAULT_WIDTHS)


def _architecture(arch: str) -> type[nn.Module]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def build_model(arch: str = "mask_cnn", widths: list[int] | tuple[int, ...] | None = None) -> nn.Module:
    """A freshly initialised network; ``widths`` None: the architecture's default."""
    cls = _architecture(arch)
    return cls(widths) if widths else cls()


def model_config(model: nn.Module) -> dict:
    arch = next(name for name, cls in ARCHITECTURES.items() if type(model) is cls)
    return {"arch": arch, "widths": list(model.widths)}


def save_model(path: str | os.PathLike, model: nn.Module, **extra: float | int | str | dict) -> None:
    """Write the model with everything needed to rebuild and use it, atomically.

    Plain tensors and Python types only, so ``torch.load(path, weights_only=True)``
    reads it without unpickling code."""
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": model_config(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "sample_rate": dsp.SAMPLE_RATE,
        "stft": {"n_fft": dsp.N_FFT, "hop": dsp.HOP, "window": "hann"},
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(path, buffer.getvalue())  # local: temp file, then rename


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model (eval mode) and return it with its metadata."""
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model file") from None
    except Exception:  # torch's own message is pages long; the file is simply not a model
        raise ValueError(f"{path}: not a speech-enhance model file (torch.load could not read it)") from None
    if not isinstance(payload, dict) or "model_config" not in payload:
        raise ValueError(f"{path}: not a speech-enhance model (no model_config)")
    if payload.get("sample_rate") != dsp.SAMPLE_RATE or payload.get("stft", {}).get("hop") != dsp.HOP:
        raise ValueError(f"{path}: made for sample rate/STFT {payload.get('sample_rate')}/{payload.get('stft')}")
    cfg = payload["model_config"]
    model = build_model(cfg["arch"], cfg["widths"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
