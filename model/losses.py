"""Training losses: objects chosen by name (``train --loss``), saved in the run's config.

Every loss compares the enhanced magnitude (Mask × Noisy) with the clean magnitude of a
batch of patches [batch, 1, 257, frames]; a waveform loss also needs the noisy phase,
through which both go back to the time domain, and a mask loss the noisy magnitude.
Format-1 datasets store no clean phase, so a waveform loss's target is the clean magnitude
with the noisy phase: the best a mask on the noisy magnitude can reach, measured after
overlap-add.

- ``mag_l1``: the seed's L1 on linear magnitudes. Linear magnitudes are dominated by the
  loud low-frequency bins, so quiet speech and high bands hardly count.
- ``cmag_l1`` / ``cmag_mse``: L1 / MSE on power-law compressed magnitudes |·|^0.3
  (Wilson et al., 2018; the compression of DeepFilterNet's and many DNS entries' losses):
  quiet bins weigh more, as they do for the ear.
- ``cmag_asym``: ``cmag_mse`` with the squared error of bins the mask suppresses below the
  clean magnitude weighted ``OVER_SUPPRESSION`` times (the asymmetric loss of
  VoiceFilter-Lite, Wang et al., 2020). A symmetric loss lets a network that cannot tell
  speech from an unfamiliar noise shrink both; this one keeps the speech in doubt (on
  validation 2 lost STOI and SI-SDR, 8 lost PESQ: BENCHMARKS.md), though at 0 dB and below
  as many dB of noise left cost STOI more than removed speech does (``bench/mask_errors.py``);
  beside the STOI term, 1 (symmetric) tied with 4 on validation (README).
- ``mask_mse`` / ``mask_asym``: MSE between the square roots of the mask (Enhanced / Noisy)
  and the ideal ratio mask min(Clean / Noisy, 1), every bin with sound weighing the same
  (RNNoise's gain loss, Valin 2018); ``mask_asym`` weighs over-suppression as ``cmag_asym``
  does. Magnitude losses, even compressed, weigh a bin by its level, so the quiet bins
  between and around speech, and speech pauses, where leftover noise is heard, count little.
- ``sisdr``: negative SI-SDR of the patch waveforms, in dB.
- ``cmag_mse_sisdr`` / ``cmag_asym_sisdr``: ``cmag_mse`` / ``cmag_asym`` plus ``SISDR_WEIGHT`` (0.001) ×
  negative SI-SDR in dB (both about 0.01 at the start of training): the spectral fit and
  the waveform measure people report.
- ``cmag_mask_asym_sisdr``: ``cmag_asym_sisdr`` plus ``MASK_WEIGHT`` × ``mask_asym``.
- ``stoi``: 1 − STOI's intermediate intelligibility on the magnitudes (Taal et al., 2011;
  trained on as in Kolbæk et al., 2018): the correlation of clean and enhanced envelopes in
  one-third-octave bands over 384 ms, the enhanced one scaled to the clean and clipped.
  Magnitude losses weigh each bin alone; STOI weighs how a band's level follows the speech
  over syllables, which leftover noise under speech and in its dips spoils.
- ``cmag_asym_sisdr_stoi``: ``cmag_asym_sisdr`` plus ``STOI_WEIGHT`` × ``stoi``.

Weights and factors are options (``train --loss-option NAME=VALUE``, :func:`get_loss`):
``over_suppression`` of the asymmetric losses, ``erb_weight`` of the compressed-magnitude
ones (:func:`erb_weights`), ``sisdr_weight``, ``mask_weight`` and ``stoi_weight`` of the
sums. They are saved in the run's config with the loss's name.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch

from speech_enhance.pipeline import dsp

COMPRESSION = 0.3
MAG_FLOOR = 1e-12  # keeps the gradient of x^0.3 finite at silent bins
OVER_SUPPRESSION = 4.0  # cmag_asym: weight of a bin's squared error where enhanced < clean
MASK_POWER = 0.5  # mask_mse compares square roots of the masks, as RNNoise's loss does
SOUND_FLOOR = 1e-6  # mask_mse: bins of a quieter noisy magnitude have no defined mask
MASK_WEIGHT = 0.5  # cmag_mask_asym_sisdr: mask_asym's weight
SISDR_WEIGHT = 1e-3  # the *_sisdr losses: the SI-SDR term's weight (per dB)
STOI_WEIGHT = 0.1  # cmag_asym_sisdr_stoi: the STOI term's weight
# STOI's analysis (Taal et al., 2011), at this project's 8 ms hop: 15 one-third-octave
# bands from 150 Hz, 384 ms segments, the enhanced envelope clipped 15 dB above the clean,
# frames more than 40 dB below the loudest left out.
STOI_BANDS, STOI_LOW_HZ, STOI_SEGMENT, STOI_CLIP_DB, STOI_RANGE_DB = 15, 150.0, 48, 15.0, 40.0
STOI_STRIDE = 4  # frames between segments: STOI slides by one; every fourth is a quarter of the work


class Loss:
    name: ClassVar[str]
    needs_phase: ClassVar[bool] = False

    def options(self) -> dict[str, float]:
        """The settings ``train --loss-option NAME=VALUE`` may change, with their values."""
        return {}

    def configured(self, **options: float) -> Loss:
        """A copy with some of :meth:`options` changed (all of them known: see :func:`get_loss`)."""
        return self

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class MagnitudeL1(Loss):
    name = "mag_l1"

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mean(torch.abs(enhanced - clean))


@functools.cache
def erb_weights(exponent: float) -> torch.Tensor:
    """[257, 1] weights of the STFT bins, ERB(f)^-exponent normalised to mean 1 (Glasberg &
    Moore's bandwidth, 24.7 (4.37 f / 1000 + 1) Hz). 0 weighs every bin alike, as the
    losses do by default; 1 weighs each ERB alike, as hearing and STOI's one-third-octave
    bands do: the 19 % of the bins below 1.5 kHz get 57 % of the weight. Cached (every
    batch uses it): do not modify it."""
    hz = torch.arange(dsp.N_BINS, dtype=torch.float64) * dsp.SAMPLE_RATE / dsp.N_FFT
    w = (24.7 * (4.37 * hz / 1000 + 1)) ** -exponent
    return (w / w.mean()).float()[:, None]


def _compressed_diff(estimate: torch.Tensor, target: torch.Tensor, power: float) -> torch.Tensor:
    return estimate.clamp_min(MAG_FLOOR).pow(power) - target.clamp_min(MAG_FLOOR).pow(power)


def _squared_error(diff: torch.Tensor, kind: str, over_suppression: float) -> torch.Tensor:
    """``diff`` squared; for ``kind`` "asym" weighted ``over_suppression`` where it is negative
    (the estimate below the target: speech removed)."""
    if kind == "asym":
        return torch.where(diff < 0, over_suppression, 1.0) * diff.square()
    return diff.square()


class CompressedMagnitude(Loss):
    """Distance between ``|·|^power`` of the two magnitudes: ``kind`` "l1", "mse", or
    "asym" (MSE with the squared error of over-suppressed bins weighted ``over_suppression``),
    each bin weighted by :func:`erb_weights` (``erb_weight``, 0: alike)."""

    def __init__(self, kind: str, power: float = COMPRESSION, over_suppression: float = OVER_SUPPRESSION,
                 erb_weight: float = 0.0):
        if kind not in ("l1", "mse", "asym"):
            raise ValueError(f"kind must be l1, mse or asym, got {kind!r}")
        self.kind, self.power, self.over_suppression, self.erb_weight = kind, power, over_suppression, erb_weight
        self.name = f"cmag_{kind}"

    def options(self) -> dict[str, float]:
        return {**({"over_suppression": self.over_suppression} if self.kind == "asym" else {}),
                "erb_weight": self.erb_weight}

    def configured(self, **options: float) -> Loss:
        return CompressedMagnitude(self.kind, self.power, options.get("over_suppression", self.over_suppression),
                                   options.get("erb_weight", self.erb_weight))

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        diff = _compressed_diff(enhanced, clean, self.power)
        error = diff.abs() if self.kind == "l1" else _squared_error(diff, self.kind, self.over_suppression)
        if self.erb_weight:
            if error.shape[-2] != dsp.N_BINS:
                raise ValueError(f"erb_weight weighs the {dsp.N_BINS} STFT bins, got {error.shape[-2]} rows")
            error = error * erb_weights(self.erb_weight).to(error)
        return torch.mean(error)


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SI-SDR in dB of each row of [batch, samples] (zero-mean first)."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    target = target - target.mean(dim=-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True) + eps)
    projection = scale * target
    noise = estimate - projection
    return 10 * torch.log10((projection.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))


def patch_waveforms(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Waveforms [batch, samples] of magnitude patches [batch, 1, 257, frames] with ``phase``."""
    spec = torch.polar(magnitude[:, 0].float(), phase[:, 0].float())
    frames = spec.shape[-1]
    return dsp.istft(spec, (frames - 1) * dsp.HOP)


class NegativeSISDR(Loss):
    name = "sisdr"
    needs_phase = True

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        if phase is None:
            raise ValueError("the sisdr loss needs the noisy phase of each patch")
        return -si_sdr(patch_waveforms(enhanced, phase), patch_waveforms(clean, phase)).mean()


@functools.cache
def third_octave_matrix(n_bands: int = STOI_BANDS, low_hz: float = STOI_LOW_HZ) -> torch.Tensor:
    """[n_bands, 257]: 1 where a bin's centre lies in a one-third-octave band around
    low_hz·2^(j/3), as STOI groups its DFT bins (at least one bin per band). Cached: the
    stoi loss uses it every batch; do not modify it."""
    hz = torch.arange(dsp.N_BINS, dtype=torch.float64) * dsp.SAMPLE_RATE / dsp.N_FFT
    centres = low_hz * 2.0 ** (torch.arange(n_bands, dtype=torch.float64) / 3)
    lo, hi = centres * 2 ** (-1 / 6), centres * 2 ** (1 / 6)
    bands = ((hz[None] >= lo[:, None]) & (hz[None] < hi[:, None])).float()
    nearest = (hz[None] - centres[:, None]).abs().argmin(dim=1)
    bands[torch.arange(n_bands), nearest] = 1.0  # a band narrower than a bin keeps its nearest one
    return bands


def short_time_intelligibility(enhanced: torch.Tensor, clean: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """STOI's intermediate measure of each patch [batch, 1, 257, frames] → [batch]: the mean
    correlation, over bands and 384 ms segments, of the clean band envelope with the
    enhanced one scaled to the clean's energy and clipped 15 dB above it. As STOI does, the
    frames more than 40 dB below the patch's loudest are left out first (moved to the end,
    and the segments that reach them weigh nothing); a patch with too little speech for one
    segment scores 0."""
    bands = third_octave_matrix().to(clean)
    x = (bands @ clean[:, 0].square() + eps).sqrt()  # [batch, bands, frames]
    y = (bands @ enhanced[:, 0].square() + eps).sqrt()
    energy = 10 * torch.log10(clean[:, 0].square().sum(1) + eps)  # [batch, frames]
    speech = energy > energy.amax(dim=1, keepdim=True) - STOI_RANGE_DB
    order = torch.argsort((~speech).to(torch.uint8), dim=1, stable=True)[:, None].expand_as(x)
    x, y = x.gather(-1, order).unfold(-1, STOI_SEGMENT, STOI_STRIDE), y.gather(-1, order).unfold(-1, STOI_SEGMENT, STOI_STRIDE)
    ends = torch.arange(x.shape[2], device=x.device) * STOI_STRIDE + STOI_SEGMENT  # [segments]
    weight = (ends[None] <= speech.sum(1, keepdim=True)).to(x.dtype)  # [batch, segments]: speech only
    scale = x.norm(dim=-1, keepdim=True) / (y.norm(dim=-1, keepdim=True) + eps)
    y = torch.minimum(y * scale, x * (1 + 10 ** (STOI_CLIP_DB / 20)))
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    corr = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1) + eps)  # [batch, bands, segments]
    return (corr.mean(1) * weight).sum(-1) / weight.sum(-1).clamp_min(1)


class NegativeSTOI(Loss):
    name = "stoi"

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        if clean.shape[-1] < STOI_SEGMENT:
            raise ValueError(f"the stoi loss needs patches of at least {STOI_SEGMENT} frames, got {clean.shape[-1]}")
        return 1 - short_time_intelligibility(enhanced, clean).mean()


class RatioMask(Loss):
    """Distance between the square roots of the mask (Enhanced / Noisy) and of the ideal
    ratio mask min(Clean / Noisy, 1), averaged over the bins with sound: ``kind`` "mse", or
    "asym" (over-suppressed bins weighted ``over_suppression``, as in ``cmag_asym``)."""

    def __init__(self, kind: str, over_suppression: float = OVER_SUPPRESSION):
        if kind not in ("mse", "asym"):
            raise ValueError(f"kind must be mse or asym, got {kind!r}")
        self.kind, self.over_suppression = kind, over_suppression
        self.name = f"mask_{kind}"

    def options(self) -> dict[str, float]:
        return {"over_suppression": self.over_suppression} if self.kind == "asym" else {}

    def configured(self, **options: float) -> Loss:
        return RatioMask(self.kind, options.get("over_suppression", self.over_suppression))

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        if noisy is None:
            raise ValueError(f"the {self.name} loss needs the noisy magnitude of each patch")
        sound = noisy > SOUND_FLOOR
        safe = torch.where(sound, noisy, 1.0)
        mask, ideal = (enhanced / safe).clamp(0.0, 1.0), (clean / safe).clamp(0.0, 1.0)
        error = _squared_error(_compressed_diff(mask, ideal, MASK_POWER), self.kind, self.over_suppression)
        return torch.sum(torch.where(sound, error, 0.0)) / sound.sum().clamp_min(1)


class Sum(Loss):
    """``first`` + ``weight`` × ``second``; ``weight_option`` names the weight among the
    options, next to those of the two parts (an option of both sets both)."""

    def __init__(self, name: str, first: Loss, second: Loss, weight: float, weight_option: str):
        self.name, self.first, self.second, self.weight = name, first, second, weight
        self.weight_option = weight_option
        self.needs_phase = first.needs_phase or second.needs_phase

    def options(self) -> dict[str, float]:
        return {**self.first.options(), **self.second.options(), self.weight_option: self.weight}

    def configured(self, **options: float) -> Loss:
        return Sum(self.name, self.first.configured(**options), self.second.configured(**options),
                   options.get(self.weight_option, self.weight), self.weight_option)

    def __call__(self, enhanced: torch.Tensor, clean: torch.Tensor, phase: torch.Tensor | None = None,
                 noisy: torch.Tensor | None = None) -> torch.Tensor:
        return self.first(enhanced, clean, phase, noisy) + self.weight * self.second(enhanced, clean, phase, noisy)


CMAG_ASYM_SISDR = Sum("cmag_asym_sisdr", CompressedMagnitude("asym"), NegativeSISDR(), SISDR_WEIGHT, "sisdr_weight")
LOSSES: dict[str, Loss] = {loss.name: loss for loss in (
    MagnitudeL1(),
    CompressedMagnitude("l1"),
    CompressedMagnitude("mse"),
    CompressedMagnitude("asym"),
    NegativeSISDR(),
    Sum("cmag_mse_sisdr", CompressedMagnitude("mse"), NegativeSISDR(), SISDR_WEIGHT, "sisdr_weight"),
    CMAG_ASYM_SISDR,
    RatioMask("mse"),
    RatioMask("asym"),
    Sum("cmag_mask_asym_sisdr", Sum("", CompressedMagnitude("asym"), RatioMask("asym"), MASK_WEIGHT, "mask_weight"),
        NegativeSISDR(), SISDR_WEIGHT, "sisdr_weight"),
    NegativeSTOI(),
    Sum("cmag_asym_sisdr_stoi", CMAG_ASYM_SISDR, NegativeSTOI(), STOI_WEIGHT, "stoi_weight"),
)}


def get_loss(name: str, **options: float) -> Loss:
    """The loss called ``name``, with ``options`` (``train --loss-option``) changed from
    their defaults; ValueError for an unknown loss, option or a value that is not a
    non-negative number."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    loss = LOSSES[name]
    known = loss.options()
    for option, value in options.items():
        if option not in known:
            raise ValueError(f"the {name} loss has no option {option!r}; it has: {', '.join(known) or 'none'}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"loss option {option} must be a non-negative number, got {value!r}")
    return loss.configured(**options) if options else loss
