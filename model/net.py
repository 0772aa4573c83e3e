"""The networks, their registry, and the saved-model format.

Every network maps the noisy STFT magnitude [batch, 1, 257, frames] to a mask in [0, 1]
of the same shape, and the enhanced magnitude is Mask × Noisy (the noisy phase is kept).
A network that also reads the noisy phase (``input_channels`` 2) takes it in radians as a
second input channel (:func:`network_input`); its output is the same magnitude mask.
What a network sees: ``log(|X| + 1e-3)``, normalised by a parameter-free BatchNorm
(running statistics of the training data, frozen at inference). Log compression turns
the spread of recording levels into a shift and keeps quiet harmonics visible beside loud
noise; a *fixed* statistic, not per-utterance normalisation, keeps a chunk's output
independent of the rest of the file, so long files are enhanced in pieces.

The contract (:class:`MaskNet`): each architecture is registered once under its name, owns
its defaults, saves every constructor argument with the model (:meth:`MaskNet.config`),
and says how many past and future frames one output frame depends on, which is the
context ``enhance`` gives each chunk; a recurrent network instead carries its state from
chunk to chunk (:meth:`MaskNet.stream`).
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, ClassVar

import torch
from torch import nn

from speech_enhance.pipeline import dsp, storage

FORMAT_VERSION = 1
LOG_EPS = 1e-3
MAX_LOOKAHEAD = 16  # frames (128 ms): past that, a network meant to stream should run whole
FLOOR_SOFTNESS = 0.25  # floor_s: temperature of the soft minimum, in units of the normalised features
FLOOR_MAX_EXP = 60.0  # floor_s: exp(-x / softness) is clamped below float32's range
LEVEL_S = 2.0  # level_db: time constant of the running input level, seconds
MAX_GAIN_DB = 40.0  # level_db: the most the input is raised or lowered (-60 to +20 dBFS for a -20 dB target)
MAX_HALVINGS = 5  # crn: most frequency halvings (one per width): the bottleneck keeps 9 of the 257 bins
PITCH_QUEFRENCIES = (40, 257)  # cepstrum: lags in samples whose peaks are pitches of 400 to 62.5 Hz
ARCHITECTURES: dict[str, type[MaskNet]] = {}


class MaskNet(nn.Module):
    """Base of every registered network."""

    name: ClassVar[str]
    DEFAULTS: ClassVar[dict]
    # Frames of input before / after a frame that its mask depends on; math.inf: unbounded.
    past_frames: ClassVar[float]
    future_frames: ClassVar[float]

    # β of :func:`post_filter` (0: off), applied in eval mode only. Saved in the model file
    # beside the weights, not a constructor argument: it changes inference, not what is learnt.
    post_filter: float = 0.0

    def __init__(self, **config: object):
        super().__init__()
        self._config = config
        self.input_norm = nn.BatchNorm2d(1, affine=False)

    def output(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask as inference applies it: through the post-filter, if any (training sees the raw mask)."""
        return post_filter(mask, self.post_filter) if self.post_filter and not self.training else mask

    def config(self) -> dict:
        """Every constructor argument: saved with the model, rebuilds it."""
        return dict(self._config)

    @property
    def widths(self) -> list[int]:
        return list(self._config["widths"])

    @property
    def input_channels(self) -> int:
        """1: the noisy magnitude; 2: the magnitude and the noisy phase (:func:`network_input`)."""
        return 1

    def features(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        x = torch.log(noisy_mag + LOG_EPS)
        if self.training:
            return self.input_norm(x)
        # BatchNorm's inference map written out: an ONNX trace of it needs no channel count,
        # which the trace loses when the input was scaled by a running gain (level_db).
        norm = self.input_norm
        return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)

    @property
    def streamable(self) -> bool:
        """True for a causal network that enhances chunk by chunk carrying a state."""
        return False

    def stream(self, noisy_mag: torch.Tensor, state: object | None) -> tuple[torch.Tensor, object]:
        """Masks of the next frames of a stream and the state after them (streamable only)."""
        raise NotImplementedError(f"{self.name} is not a streaming network")

    def flat_state(self, state: object) -> list[torch.Tensor]:
        """The stream state as a flat list of tensors (ONNX inputs and outputs)."""
        raise NotImplementedError(f"{self.name} is not a streaming network")

    def unflat_state(self, tensors: list[torch.Tensor]) -> object:
        """Inverse of :meth:`flat_state`."""
        raise NotImplementedError(f"{self.name} is not a streaming network")

    def zero_state(self, batch: int = 1) -> list[torch.Tensor]:
        """The flat state at the start of a stream (all zeros), which ``stream(x, None)`` uses."""
        was_training = self.training
        try:  # eval: the probe frame must not move BatchNorm's running statistics
            with torch.no_grad():
                _, state = self.eval().stream(torch.ones(batch, self.input_channels, dsp.N_BINS, 1), None)
        finally:
            self.train(was_training)
        return [torch.zeros_like(t) for t in self.flat_state(state)]


def post_filter(mask: torch.Tensor, beta: float) -> torch.Tensor:
    """PercepNet's post-filter (Valin et al., 2020; as CRUSE and DeepFilterNet apply it):
    g' = (1 + β) g / (1 + β / sin²(πg/2)). It leaves g = 1 alone and lowers small gains
    further (β = 0.02: 0.5 → 0.49, 0.1 → 0.056): deeper suppression where the network
    already suppresses, which a loss that penalises removed speech leaves shallow."""
    if not beta:
        return mask
    sin2 = torch.sin(mask * (math.pi / 2)).square().clamp_min(1e-12)
    return (1 + beta) * mask / (1 + beta / sin2)


def check_post_filter(value: object, where: str = "post_filter") -> float:
    """β as a float, or a clear error: a post-filter strength is 0 (off) or positive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{where} must be 0 (off) or a positive number such as 0.02, got {value!r}")
    return float(value)


def reads_phase(model: object) -> bool:
    """True for a network (or its DDP or compiled wrapper, or its ONNX stand-in) that takes
    the noisy phase as a second input channel (``input_channels`` 2)."""
    return getattr(getattr(model, "module", model), "input_channels", 1) == 2


def network_input(model: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    """What ``model`` takes, [batch, channels, 257, frames], from complex STFT frames [batch,
    257, frames]: the magnitude, and the phase (radians) as a second channel for a network
    that reads it (:func:`reads_phase`)."""
    mag = spec.abs()[:, None]
    return torch.cat([mag, spec.angle()[:, None]], dim=1) if reads_phase(model) else mag


def patch_input(model: nn.Module, noisy_mag: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
    """What ``model`` takes from stored patches: the noisy magnitude [batch, 1, 257, frames],
    with their phase as a second channel for a network that reads it (:func:`reads_phase`)."""
    if not reads_phase(model):
        return noisy_mag
    if phase is None:
        raise ValueError("this network reads the noisy phase: read the patches' noisy_phase column too")
    return torch.cat([noisy_mag, phase], dim=1)


def register(cls: type[MaskNet]) -> type[MaskNet]:
    ARCHITECTURES[cls.name] = cls
    return cls


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU())


def _positive(name: str, values: list[int], count: int | tuple[int, int] | None = None) -> list[int]:
    """``values`` as ints, all positive and ``count`` of them (a number, a (fewest, most)
    range, or None: any number but none), else a ValueError naming ``name``."""
    values = [int(v) for v in values]
    low, high = (count, count) if isinstance(count, int) else (count or (1, math.inf))
    if not values or not low <= len(values) <= high or min(values) < 1:
        need = "" if count is None else f"{low} " if low == high else f"{low} to {high} "
        raise ValueError(f"{name} takes {need}positive channel widths, got {values}")
    return values


@register
class MaskCNN(MaskNet):
    """The seed: Conv2d(1→32) BN GELU → (32→64) → (64→64) → (64→32) → Conv2d(32→1) Sigmoid,
    3×3 kernels with same padding; ``widths`` sets the four hidden widths."""

    name = "mask_cnn"
    DEFAULT_WIDTHS = (32, 64, 64, 32)
    DEFAULTS = {"widths": list(DEFAULT_WIDTHS)}

    def __init__(self, widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS):
        widths = _positive("mask_cnn", widths)
        super().__init__(widths=widths)
        chans = [1, *widths]
        self.encoder = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.head = nn.Sequential(nn.Conv2d(widths[-1], 1, 3, padding=1), nn.Sigmoid())

    @property
    def past_frames(self) -> int:  # one frame per 3x3 layer
        return len(self.widths) + 1

    future_frames = past_frames

    def forward(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        """Mask in [0, 1] for a noisy magnitude [batch, 1, 257, frames]."""
        return self.output(self.head(self.encoder(self.features(noisy_mag))))


class _FreqDown(nn.Sequential):
    """3×3 conv over (frequency, time) that halves frequency, keeps frames: BN, ELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, stride=(2, 1), padding=1), nn.BatchNorm2d(cout), nn.ELU())


class _FreqUp(nn.Module):
    """Doubles frequency (2F - 1 bins: 17 → 33 … → 257), frame by frame: a 3-bin conv makes
    two outputs per bin, interleaved (sub-pixel upsampling; a transposed conv costs twice
    as much on CPU), then BN and ELU, or the sigmoid of the last layer. ``factor`` 1 keeps
    the bins (the level of a full-resolution encoder layer)."""

    def __init__(self, cin: int, cout: int, last: bool = False, factor: int = 2):
        super().__init__()
        self.cout, self.factor = cout, factor
        self.conv = nn.Conv2d(cin, factor * cout, (3, 1), padding=(1, 0))
        self.post = nn.Sigmoid() if last else nn.Sequential(nn.BatchNorm2d(cout), nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return self.post(self.conv(x))
        b, _, f, t = x.shape
        y = self.conv(x).reshape(b, 2, self.cout, f, t).permute(0, 2, 3, 1, 4).reshape(b, self.cout, 2 * f, t)
        return self.post(y[:, :, : 2 * f - 1])


class _Decoder(nn.ModuleList):
    """The U-Net's and the CRN's decoder: one :class:`_FreqUp` per encoder level, widths in
    reverse down to the one-channel mask, each level's encoder output added as its skip
    (additive skips: half the input channels of concatenated ones). ``factors[i]`` is how
    much encoder level ``i`` divided frequency by (2, or 1 for a full-resolution layer)."""

    def __init__(self, widths: list[int], factors: list[int] | None = None):
        outs = [*reversed(widths[:-1]), 1]
        factors = list(reversed(factors or [2] * len(widths)))
        super().__init__(_FreqUp(c, o, last=(i == len(outs) - 1), factor=k)
                         for i, (c, o, k) in enumerate(zip(reversed(widths), outs, factors, strict=True)))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self, reversed(skips), strict=True):
            x = layer(x + skip)
        return x


@register
class UNet(MaskNet):
    """U-Net over frequency with temporal context: four stride-2 encoder levels over
    frequency (3×3 kernels), a bottleneck of residual dilated 1-D convolutions over time
    on ``temporal`` channels (dilations 1, 2, 4, 8: ±15 frames, ±120 ms, at the coarsest
    scale), and a frame-wise decoder with skip connections (:class:`_Decoder`)."""

    name = "unet"
    DEFAULT_WIDTHS = (16, 32, 48, 64)
    DEFAULTS = {"widths": list(DEFAULT_WIDTHS), "temporal": 128, "dilations": [1, 2, 4, 8]}

    def __init__(self, widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS, temporal: int = 128,
                 dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8)):
        widths, dilations = _positive("unet", widths, 4), _positive("unet dilations", dilations)
        temporal = _positive("unet temporal", [temporal])[0]
        super().__init__(widths=widths, temporal=temporal, dilations=dilations)
        chans = [1, *widths]
        self.encoder = nn.ModuleList(_FreqDown(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))
        bottleneck = widths[-1] * 17  # 257 → 129 → 65 → 33 → 17 bins
        self.squeeze = nn.Conv1d(bottleneck, temporal, 1)
        self.temporal = nn.ModuleList(
            nn.Sequential(nn.Conv1d(temporal, temporal, 3, padding=d, dilation=d), nn.BatchNorm1d(temporal), nn.ELU())
            for d in dilations)
        self.expand = nn.Conv1d(temporal, bottleneck, 1)
        self.decoder = _Decoder(widths)

    @property
    def past_frames(self) -> int:  # four 3-frame encoder layers, then the dilated stack
        return 4 + sum(self._config["dilations"])

    future_frames = past_frames

    def forward(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        x = self.features(noisy_mag)
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        b, c, f, t = x.shape
        h = self.squeeze(x.reshape(b, c * f, t))
        for block in self.temporal:
            h = h + block(h)  # residual: each block adds context
        x = x + self.expand(h).reshape(b, c, f, t)
        return self.output(self.decoder(x, skips))


class _CausalDown(nn.Module):
    """Conv that halves frequency (``stride`` 2; 1 keeps it) and looks at this frame and the
    one before (causal): the previous frame comes from ``cache`` (zeros at the start of a stream)."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (3, 2), stride=(stride, 1), padding=(1, 0))
        self.post = nn.Sequential(nn.BatchNorm2d(cout), nn.ELU())

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is None:
            cache = x.new_zeros(*x.shape[:3], 1)
        padded = torch.cat([cache, x], dim=3)
        return self.post(self.conv(padded)), padded[..., -1:]


@register
class CRN(MaskNet):
    """Convolutional recurrent network (Tan & Wang, 2018), causal: a conv layer per width
    that halves frequency (four by default: 257 → 17 bins), each seeing the current and
    the previous frame; a GRU over time on the flattened bottleneck; a frame-wise decoder
    with skip connections (:class:`_Decoder`); a sigmoid mask. Nothing looks ahead, so it
    runs in real time, frame by frame, with its state (the GRU's and each conv's last
    frame) carried between calls.

    ``bands`` > 0 runs it on that many frequency bands instead of the 257 bins
    (:func:`dsp.band_matrix`: the low bins as they are, ERB bands above, as RNNoise,
    GTCRN and DeepFilterNet do): the network sees band-averaged magnitudes and its band
    gains are interpolated back to the bins. The convolutions then run on half as many
    frequencies, which leaves compute for a wider GRU.

    ``mean_norm_s`` > 0 adds a second input channel: the features minus their causal
    running mean per bin over about that many seconds (an exponential average that starts
    at zero, carried in the stream state), as DeepFilterNet normalises its input. Steady
    noise then looks alike whatever its level and colour, and speech stands out of it.

    ``floor_s`` > 0 adds another input channel: the features above their causal running
    noise floor per bin, a soft minimum over the past whose older values count less the
    older they are (time constant ``floor_s`` seconds; :func:`noise_floor`), as minimum
    statistics track noise under speech (Martin, 2001). The running mean follows speech
    as well as noise; the floor stays under speech, so the channel reads as an a
    posteriori SNR whatever the noise (noise-aware training, Seltzer et al., 2013).

    ``cepstrum`` 1 gives the GRU the noisy frame's cepstrum at the lags of voice pitch
    (62.5-400 Hz; :func:`cepstrum_matrix`) beside the bottleneck. Voiced speech is a comb
    of harmonics, which the strided encoder blurs away by its second layer; the cepstrum
    peaks at the pitch period whatever the noise's spectrum, the periodicity cue RNNoise
    takes from its pitch filter. It is frame-wise and needs no state.

    ``fullres`` > 0 puts a conv layer of that many channels before the encoder that keeps
    all bins, with its own decoder level and skip, so the mask is drawn at the input's
    resolution. Harmonics of voice pitch lie 3-13 bins apart; after the first halving a
    low voice's comb is blurred, and only the first level's few channels can place the
    mask between harmonics, where noise under voiced speech is removed (RNNoise does it with
    its pitch filter).

    ``level_db`` < 0 brings the input to that level (dBFS) before the network sees it: the
    magnitudes are scaled by the gain that brings their causal running level (mean power
    over about ``LEVEL_S`` seconds, carried in the stream state) to ``level_db``, within
    ± ``MAX_GAIN_DB``. The mask still multiplies the input as it came, so the output keeps
    its level. Features are log magnitudes floored at ``LOG_EPS``, so without it a recording
    30 dB quieter than the training mixtures loses its quiet bins below the floor, and one
    louder than them is unlike anything trained on; 0 (the default) is off.

    ``phase`` 1 also gives the network the noisy phase: two input channels, the cosine and
    sine of each bin's phase advance from the previous frame less the advance of a sinusoid
    at the bin's centre frequency (2π·k·hop / N_FFT). A steady harmonic advances its few bins
    by the same amount frame after frame, in a pattern across them set by where it lies
    between bins; noise advances them at random. So the phase says which bins hold a
    harmonic even where noise is as loud, the cue a magnitude alone lacks at low SNR (the
    phase-aware inputs of GTCRN and DeepFilterNet). The last frame's phase rides in the
    stream state. The mask is still a magnitude mask.

    ``band_gru`` > 0 adds a GRU of that many units over time at each frequency position of
    the second halving (65 positions, 125 Hz apart, on all bins), its weights shared by every position
    and its output added back (zero at the start of training, so it begins as the plain CRN).
    The flat GRU sees frequency only at the bottleneck, 500 Hz apart, where every STOI band
    below 1.5 kHz shares a position or two; a shared per-band GRU learns how a band's level
    moves over time whatever the noise (FullSubNet's sub-band model; the inter-frame path of
    DPCRN and GTCRN). Its state rides in the stream state.

    ``layers`` stacks that many GRU layers (Tan & Wang's CRN and NSNet2 use two): the
    second models time on the first's output rather than on the raw bottleneck.

    ``lookahead`` > 0 lets each mask see that many later frames (8 ms each), as
    DeepFilterNet's look-ahead does: the network runs as before, and its output is taken
    ``lookahead`` frames late, so a stream's masks lag its input by that much (the first
    ``lookahead`` masks of a stream belong to no frame). The whole-input call pads the end
    with that many frames of silence (zero magnitude), which is what a stream is flushed
    with at its end, so both agree."""

    name = "crn"
    # Narrow first layers: they run at 129 and 65 bins, where most of the time goes.
    DEFAULT_WIDTHS = (8, 16, 32, 32)
    DEFAULTS = {"widths": list(DEFAULT_WIDTHS), "hidden": 192, "bands": 0, "mean_norm_s": 0.0, "lookahead": 0,
                "floor_s": 0.0, "cepstrum": 0, "layers": 1, "fullres": 0, "level_db": 0.0, "phase": 0,
                "band_gru": 0}
    past_frames = math.inf

    def __init__(self, widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS, hidden: int = 192, bands: int = 0,
                 mean_norm_s: float = 0.0, lookahead: int = 0, floor_s: float = 0.0, cepstrum: int = 0,
                 layers: int = 1, fullres: int = 0, level_db: float = 0.0, phase: int = 0, band_gru: int = 0):
        widths, hidden, bands = _positive("crn", widths, (2, MAX_HALVINGS)), int(hidden), int(bands)
        mean_norm_s, floor_s = _number("mean_norm_s", mean_norm_s), _number("floor_s", floor_s)
        if hidden < 1:
            raise ValueError(f"crn hidden size must be positive, got {hidden}")
        layers = _whole("layers", layers, 1, math.inf, "a whole number of GRU layers ≥ 1")
        lookahead = _whole("lookahead", lookahead, 0, MAX_LOOKAHEAD,
                           f"a whole number of frames from 0 to {MAX_LOOKAHEAD}")
        cepstrum = _whole("cepstrum", cepstrum, 0, 1, "0 (off) or 1 (on)")
        fullres = _whole("fullres", fullres, 0, math.inf, "a whole number of channels ≥ 0 (0: off)")
        phase = _whole("phase", phase, 0, 1, "0 (off) or 1 (on)")
        band_gru = _whole("band_gru", band_gru, 0, math.inf, "a whole number of GRU units ≥ 0 (0: off)")
        level_db = _number("level_db", level_db)
        if not (math.isfinite(level_db) and level_db <= 0):
            raise ValueError(f"crn level_db must be 0 (off) or a level in dBFS below 0, e.g. -20; got {level_db}")
        # Per-frame decays of the running mean and of the noise floor's weights.
        decay, floor_decay = _frame_decay("mean_norm_s", mean_norm_s), _frame_decay("floor_s", floor_s)
        scale = 2 ** len(widths)  # one halving per width, then the decoder's 2F - 1
        if bands and (bands < 2 * scale + 1 or (bands - 1) % scale):
            raise ValueError(f"crn bands must be 0 (all {dsp.N_BINS} bins) or {scale}k + 1 ≥ {2 * scale + 1} "
                             f"with {len(widths)} widths, e.g. 129; got {bands}")
        if phase and bands:
            raise ValueError("crn phase reads the phase of each of the 257 bins: it cannot be used with bands")
        super().__init__(widths=widths, hidden=hidden, bands=bands, mean_norm_s=mean_norm_s, lookahead=lookahead,
                         floor_s=floor_s, cepstrum=cepstrum, layers=layers, fullres=fullres, level_db=level_db,
                         phase=phase, band_gru=band_gru)
        self.decay, self.floor_decay = decay, floor_decay
        # The target as mean power per bin: the STFT of white noise of power P has P·Σw² (3/8 N_FFT, Hann).
        self.level_power = 10 ** (level_db / 10) * 3 / 8 * dsp.N_FFT if level_db else 0.0
        self.level_decay = _frame_decay("level_db", LEVEL_S)
        if bands:  # fixed, rebuilt from the config: not saved with the weights
            to_bins = torch.tensor(dsp.band_matrix(bands), dtype=torch.float32)
            self.register_buffer("to_bins", to_bins, persistent=False)
            self.register_buffer("to_bands", (to_bins / to_bins.sum(0)).T.contiguous(), persistent=False)
        levels = [fullres, *widths] if fullres else widths
        strides = [1] * bool(fullres) + [2] * len(widths)  # the full-resolution layer keeps its bins
        chans = [1 + bool(mean_norm_s) + bool(floor_s) + 2 * phase, *levels]
        self.encoder = nn.ModuleList(_CausalDown(a, b, k) for a, b, k in zip(chans[:-1], chans[1:], strides,
                                                                             strict=True))
        bottleneck = widths[-1] * (((bands or dsp.N_BINS) - 1) // scale + 1)  # four widths: 257 → 17 bins, 129 → 9
        lags = 0
        if cepstrum:
            to_cepstrum = cepstrum_matrix(*PITCH_QUEFRENCIES)
            self.register_buffer("to_cepstrum", to_cepstrum, persistent=False)
            lags = to_cepstrum.shape[0]
            self.cepstrum_norm = nn.BatchNorm1d(lags, affine=False)  # frame-wise at inference: no state
        self.band_level = bool(fullres) + 1  # the encoder layer that halves frequency the second time
        if band_gru:
            width = levels[self.band_level]
            self.band_rnn = nn.GRU(width, band_gru, batch_first=True)
            self.band_out = nn.Linear(band_gru, width)
            nn.init.zeros_(self.band_out.weight)
            nn.init.zeros_(self.band_out.bias)
        self.rnn = nn.GRU(bottleneck + lags, hidden, num_layers=layers, batch_first=True)
        self.project = nn.Linear(hidden, bottleneck)
        self.decoder = _Decoder(levels, strides)

    @property
    def streamable(self) -> bool:
        return True

    @property
    def input_channels(self) -> int:
        return 1 + self._config["phase"]

    @property
    def future_frames(self) -> int:
        return self._config["lookahead"]

    def forward(self, noisy_mag: torch.Tensor) -> torch.Tensor:
        return stream_whole(self.stream, noisy_mag, self.future_frames)

    def stream(self, noisy_mag: torch.Tensor, state: object | None) -> tuple[torch.Tensor, object]:
        """One mask per input frame, ``lookahead`` frames late (see the class docstring)."""
        caches, hidden, mean, floor, loudness, last_phase, band = (
            state if state is not None else ([None] * len(self.encoder), None, None, None, None, None, None))
        advance = None
        if self._config["phase"]:
            noisy_mag, phase = noisy_mag[:, :1], noisy_mag[:, 1:]
            advance, last_phase = phase_advance(phase, last_phase)
        if self.level_power:
            gain, loudness = input_gain(noisy_mag, loudness, self.level_decay, self.level_power)
            noisy_mag = noisy_mag * gain
        bands = self._config["bands"]
        x = self.features(self.to_bands @ noisy_mag if bands else noisy_mag)
        channels = [x]
        if advance is not None:
            channels += [torch.cos(advance).to(x.dtype), torch.sin(advance).to(x.dtype)]
        if self.decay:
            mean = running_mean(x, x.new_zeros(*x.shape[:3], 1) if mean is None else mean, self.decay)
            channels.append(x - mean)
            mean = mean[..., -1:]
        if self.floor_decay:
            level, floor = noise_floor(x, floor, self.floor_decay)
            channels.append(x - level)
        x = torch.cat(channels, dim=1) if len(channels) > 1 else x
        skips, new_caches = [], []
        for i, (layer, cache) in enumerate(zip(self.encoder, caches, strict=True)):
            x, cache = layer(x, cache)
            if i == self.band_level and self._config["band_gru"]:
                x, band = self.band_step(x, band)
            skips.append(x)
            new_caches.append(cache)
        b, c, f, t = x.shape
        seq = x.reshape(b, c * f, t)
        if self._config["cepstrum"]:
            seq = torch.cat([seq, self.cepstrum_norm(self.to_cepstrum @ torch.log(noisy_mag[:, 0] + LOG_EPS))], dim=1)
        seq, hidden = self.rnn(seq.transpose(1, 2), hidden)
        x = self.project(seq).transpose(1, 2).reshape(b, c, f, t)
        mask = self.output(self.decoder(x, skips))
        return (self.to_bins @ mask if bands else mask), (new_caches, hidden, mean, floor, loudness, last_phase, band)

    def band_step(self, x: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [batch, channels, positions, frames] plus the shared GRU's output at each
        position (``band_gru``), and the GRU's state [1, batch × positions, units] after it."""
        b, c, f, t = x.shape
        seq, hidden = self.band_rnn(x.permute(0, 2, 3, 1).reshape(b * f, t, c), hidden)
        return x + self.band_out(seq).reshape(b, f, t, c).permute(0, 3, 1, 2), hidden

    def flat_state(self, state: object) -> list[torch.Tensor]:
        caches, hidden, mean, floor, loudness, last_phase, band = state
        return [*caches, hidden, *([mean] if self.decay else []), *(floor if self.floor_decay else []),
                *(loudness if self.level_power else []), *([last_phase] if self._config["phase"] else []),
                *([band] if self._config["band_gru"] else [])]

    def unflat_state(self, tensors: list[torch.Tensor]) -> object:
        n = len(self.encoder)
        rest = list(tensors[n + 1:])
        mean = rest.pop(0) if self.decay else None
        floor = [rest.pop(0), rest.pop(0)] if self.floor_decay else None
        loudness = [rest.pop(0), rest.pop(0)] if self.level_power else None
        last_phase = rest.pop(0) if self._config["phase"] else None
        band = rest.pop(0) if self._config["band_gru"] else None
        return list(tensors[:n]), tensors[n], mean, floor, loudness, last_phase, band


def _number(option: str, value: object) -> float:
    """``value`` as a float when it is a number (not a bool or a string); ValueError naming
    the CRN ``option`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"crn {option} must be a number, got {value!r}")
    return float(value)


def _whole(option: str, value: object, low: float, high: float, what: str) -> int:
    """``value`` as an int when it is a whole number from ``low`` to ``high`` (2.0 from JSON
    too, but not a bool or a string); ValueError naming the CRN ``option`` otherwise."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or not low <= value <= high):
        raise ValueError(f"crn {option} must be {what}, got {value!r}")
    return int(value)


def _frame_decay(option: str, seconds: float) -> float:
    """Per-frame decay of an exponential average with a time constant of ``seconds``
    (0: off, decay 0); ValueError naming the CRN ``option`` for a negative or non-finite time."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"crn {option} must be 0 (off) or a time in seconds, got {seconds}")
    return math.exp(-dsp.HOP / dsp.SAMPLE_RATE / seconds) if seconds else 0.0


def stream_whole(stream, noisy_mag: torch.Tensor, lookahead: int) -> torch.Tensor:  # noqa: ANN001
    """The masks of a whole input from a fresh ``stream`` (a network's, or its ONNX
    stand-in's) whose masks come ``lookahead`` frames late: the end padded with that many
    silent frames, as a stream is flushed, and the first that many masks dropped."""
    if lookahead:
        noisy_mag = nn.functional.pad(noisy_mag, (0, lookahead))
    return stream(noisy_mag, None)[0][..., lookahead:]


def running_mean(x: torch.Tensor, start: torch.Tensor, decay: float, block: int = 64) -> torch.Tensor:
    """Exponential running mean over the last axis, m_t = decay·m_(t-1) + (1 - decay)·x_t
    from m_(-1) = ``start`` ([..., 1]), in two levels of matrix products instead of a loop
    over frames: within fixed blocks of ``block`` frames from zero, then each block's start
    carried across blocks (decay^block per block). Both matrices stay small on long inputs,
    and the frame count stays dynamic in an ONNX trace (no Python loop over blocks)."""
    frames = x.shape[-1]
    blocks = (frames + block - 1) // block
    # Zeros after the end change nothing before it: the mean is causal.
    x = nn.functional.pad(x, (0, blocks * block - frames)).unflatten(-1, (blocks, block))
    steps = torch.arange(block, device=x.device, dtype=x.dtype)
    within = x @ _decay_matrix(steps, decay) * (1 - decay)
    # Block j starts from the end of block j - 1: ends_j = D·ends_(j-1) + within_j[-1], D = decay^block.
    index = torch.arange(blocks, device=x.device, dtype=x.dtype)
    ends = within[..., -1] @ _decay_matrix(index, decay ** block) + start * (decay ** block) ** (index + 1)
    starts = torch.cat([start, ends[..., :-1]], dim=-1)
    carry = decay ** (steps + 1)
    return (within + starts[..., None] * carry).flatten(-2)[..., :frames]


def weighted_mean(x: torch.Tensor, state: list[torch.Tensor] | None,
                  decay: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Causal exponential mean of ``x`` [..., values, frames] over its frames, older frames
    weighted ``decay`` per frame and the sum divided by the sum of its weights, so it starts
    at the first frame itself (:func:`running_mean` starts from zero). Both sums are running
    means, so it costs two matrix products and streams with them as its state (zeros at the
    start). Returns the mean at each frame and the state after the last."""
    sums, weights = state if state is not None else (x.new_zeros(*x.shape[:-1], 1), x.new_zeros(*x.shape[:-2], 1, 1))
    sums = running_mean(x, sums, decay)
    weights = running_mean(torch.ones_like(x[..., :1, :]), weights, decay)
    return sums / weights, [sums[..., -1:], weights[..., -1:]]


def noise_floor(x: torch.Tensor, state: list[torch.Tensor] | None, decay: float,
                softness: float = FLOOR_SOFTNESS) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Causal soft minimum of ``x`` [batch, 1, bins, frames] over its past, older frames
    weighted ``decay`` per frame: floor_t = -softness · log(Σ_k w_k exp(-x_k / softness) / Σ_k w_k),
    w_k = decay^(t - k) (:func:`weighted_mean`). Returns the floor of each frame and the
    state after the last."""
    mean, state = weighted_mean(torch.exp((-x / softness).clamp(max=FLOOR_MAX_EXP)), state, decay)
    return -softness * torch.log(mean), state


def input_gain(mag: torch.Tensor, state: list[torch.Tensor] | None, decay: float,
               target: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-frame gain [batch, 1, 1, frames] that brings the running level of ``mag`` [batch,
    1, bins, frames] to the mean power per bin ``target``: ``target`` over the causal
    exponential mean of the frames' mean power (:func:`weighted_mean`), square-rooted,
    within ± ``MAX_GAIN_DB``. Returns the gains and the state after the last frame."""
    level, state = weighted_mean(mag.float().square().mean(dim=2, keepdim=True), state, decay)
    limit = 10 ** (MAX_GAIN_DB / 10)  # silence gets the largest gain
    gain = (target / level.clamp(min=target / limit)).clamp(min=1 / limit).sqrt()
    return gain.to(mag.dtype), state


def phase_advance(phase: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each bin's phase advance from the frame before, less the 2π·k·hop / N_FFT by which a
    sinusoid at bin k's centre advances (radians, not wrapped), for ``phase`` [batch, 1,
    bins, frames]; the frame before the first is ``last`` (zeros at the start of a stream).
    Returns it and the last frame's phase, the state for the next call."""
    phase = phase.float()
    before = torch.cat([phase.new_zeros(*phase.shape[:3], 1) if last is None else last, phase[..., :-1]], dim=3)
    centre = torch.arange(phase.shape[2], device=phase.device, dtype=phase.dtype) * (2 * math.pi * dsp.HOP / dsp.N_FFT)
    return phase - before - centre[:, None], phase[..., -1:]


def cepstrum_matrix(low: int, high: int) -> torch.Tensor:
    """[high - low, 257]: the real cepstrum at lags ``low`` to ``high`` - 1 samples of a
    frame's log magnitude over the 257 bins (the DCT-I: a cosine of period N_FFT / lag bins
    per lag, the end bins weighted half so a constant maps to zero), scaled so unit-variance
    bins give about unit-variance lags. A harmonic comb with spacing F0 peaks at the lag
    16000 / F0."""
    bins = torch.arange(dsp.N_BINS, dtype=torch.float64)
    lags = torch.arange(low, high, dtype=torch.float64)
    weight = torch.ones(dsp.N_BINS, dtype=torch.float64)
    weight[[0, -1]] = 0.5
    matrix = torch.cos(2 * math.pi * lags[:, None] * bins[None] / dsp.N_FFT) * weight
    return (matrix * math.sqrt(2 / (dsp.N_BINS - 1))).float()


def _decay_matrix(steps: torch.Tensor, decay: float) -> torch.Tensor:
    """[k, t] = decay^(t - k) where t ≥ k, else 0: a causal exponential filter as a matrix."""
    lag = steps[None, :] - steps[:, None]
    return torch.where(lag >= 0, decay ** lag.clamp(min=0), torch.zeros_like(lag))


@register
class BandCRN(CRN):
    """The CRN on 129 bands (0-2 kHz bin by bin, 64 ERB bands above) with a 256-unit GRU:
    a wider GRU for a fifth fewer MACs than ``crn``, and a gain that is smooth above 2 kHz."""

    name = "crn_erb"
    DEFAULTS = {**CRN.DEFAULTS, "hidden": 256, "bands": 129}  # every other CRN option as the CRN has it

    def __init__(self, widths: tuple[int, ...] | list[int] = CRN.DEFAULT_WIDTHS, hidden: int = 256,
                 bands: int = 129, **options: Any):
        super().__init__(widths, hidden, bands, **options)


def _architecture(arch: str) -> type[MaskNet]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def default_widths(arch: str) -> list[int]:
    """The architecture's default channel widths."""
    return list(_architecture(arch).DEFAULTS["widths"])


def build_model(arch: str = "mask_cnn", widths: list[int] | tuple[int, ...] | None = None,
                **options: object) -> MaskNet:
    """A freshly initialised network; ``widths`` None: the architecture's default; other
    constructor arguments (e.g. the CRN's ``hidden``) as keywords."""
    cls = _architecture(arch)
    config = {**cls.DEFAULTS, **({"widths": list(widths)} if widths else {}), **options}
    unknown = sorted(set(config) - set(cls.DEFAULTS))
    if unknown:
        raise ValueError(f"{arch} takes no option {', '.join(unknown)} (it takes {', '.join(sorted(cls.DEFAULTS))})")
    return cls(**config)


def model_config(model: nn.Module) -> dict:
    model = getattr(model, "module", model)  # unwrap DDP
    return {"arch": model.name, **model.config()}


def complexity(model: nn.Module, seconds: float = 1.0) -> dict:
    """Parameters, and multiply-accumulates per second of 16 kHz audio (convolutions,
    linear layers and GRUs, counted on ``seconds`` of frames; norms and activations
    left out)."""
    model = getattr(model, "module", model)
    frames = int(seconds * dsp.SAMPLE_RATE / dsp.HOP) + 1
    macs = [0]

    def count(module: nn.Module, inputs: tuple, output: object) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(module, nn.ConvTranspose2d):  # every input position meets every kernel tap
            macs[0] += inputs[0].numel() * math.prod(module.kernel_size) * module.out_channels // module.groups
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            macs[0] += out.numel() * math.prod(module.kernel_size) * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            macs[0] += out.numel() * module.in_features
        elif isinstance(module, nn.GRU):  # layers after the first take the hidden state as input
            steps, h = out.shape[0] * out.shape[1], module.hidden_size
            macs[0] += steps * 3 * h * (module.input_size + h + (module.num_layers - 1) * 2 * h)
    # A band network's fixed bins ↔ bands matrices and the cepstrum's, once each per frame.
    macs[0] += sum(b.numel() for n, b in model.named_buffers() if n in ("to_bins", "to_bands", "to_cepstrum")) * frames

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.GRU))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, model.input_channels, dsp.N_BINS, frames))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "macs_per_second": int(macs[0] / seconds)}


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
        **({"post_filter": float(model.post_filter)} if model.post_filter else {}),
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(path, buffer.getvalue())  # local: temp file, then rename


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MaskNet, dict]:
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
    cfg = dict(payload["model_config"])
    try:
        model = build_model(**cfg)
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: its weights do not fit {cfg} in this version ({reason})") from None
    try:
        model.post_filter = check_post_filter(payload.get("post_filter", 0.0))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
