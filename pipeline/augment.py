"""Dataset variety: reverberation, noise transforms, synthetic noise, microphone colouring
and clipping, all as pure numpy/scipy functions.

Every random choice is drawn once, at plan time (:func:`draw`), from a generator seeded
by the mixture's id, and stored in its manifest row; :func:`render` is deterministic in
the row (and the audio it names) alone, so any mixture re-renders bit for bit and two
builds with the same seed are identical however they are spread over workers.

Signal chain of one mixture (``n`` samples of clean speech)::

    clean  = clean with speech gaps: spans silenced with 10 ms fades (train only; optional)
    speech = clean * RIR            (real RIR file or simulated shoebox room; optional)
    target = clean (dry) | clean * RIR[:direct + 50 ms] (early)      -- the training target
    noise  = file segment [+ 2nd file at a ratio] [-> played faster or slower] | babble |
             made up from a seed: coloured, randomly shaped and gusting, impulsive (knocks,
             clatter, rain), tonal (hum, chirps) -> noise EQ -> slow gain modulation
    speech, target, noise -> microphone EQ (the same filter on all three)
    noise scaled to the SNR against the speech in the mixture; joint level gain
    noisy = speech + noise -> optional clipping at a fraction of its peak

Noise made up for variety (transforms, synthetic classes) and speech gaps are drawn for
the train split only: validation and test keep the real recordings, so checkpoints are
chosen and scores are reported on real noise. Reverberation, SNR ranges, microphone colouring and
clipping describe recording conditions and apply to every split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal

from speech_enhance.pipeline.audio import resample
from speech_enhance.pipeline.dsp import SAMPLE_RATE, fit_noise, noise_offset_range, power

EARLY_MS = 50  # reflections within this of the direct path count as "early" (target "early")
TARGETS = ("early", "dry")
RT60_RANGE = (0.2, 0.9)  # seconds, simulated rooms
MAX_IMAGE_ORDER = 32  # image-source order cap for simulated rooms (cost grows with its cube)
# Made-up noise classes, each rendered from (n, seed) alone, drawn at equal odds after babble.
GENERATED = ("coloured", "shaped", "impulses", "tonal")
NOISE_KINDS = ("file", "babble", *GENERATED)
SYNTHETIC_TYPES = {"babble": "babble", **{kind: f"synthetic-{kind}" for kind in GENERATED}}
BABBLE_TALKERS = (3, 7)  # talkers per babble mixture: low inclusive, high exclusive
BABBLE_SHARE = 0.3  # of synthetic-noise mixtures (crowds, cafés, markets: the commonest real noise)
GAP_SECONDS = (0.2, 1.5)  # length of one speech gap
GAP_COVER = (0.2, 0.5)  # fraction of an utterance its gaps add up to (at most half: speech stays)
GAP_FADE = 160  # samples (10 ms) of raised-cosine fade at each edge of a gap, so no click
SPEED_RANGE = (0.5, 2.0)  # playback speed of a recorded noise, log-uniform: an octave either way


@dataclass(frozen=True)
class Variety:
    """Which variety a build draws (all off by default: the plain dataset)."""

    rir: float = 0.0  # fraction of mixtures reverberated with a real RIR file
    rooms: float = 0.0  # fraction reverberated with a simulated shoebox room
    target: str = "early"  # training target of reverberant mixtures: early | dry
    mic_eq: float = 0.0  # fraction with a random microphone response (tilt, band limits)
    clip: float = 0.0  # fraction clipped at a random fraction of their peak
    noise_transforms: float = 0.0  # fraction of train mixtures with noise EQ/modulation/second noise
    synthetic_noise: float = 0.0  # fraction of train mixtures with babble or generated noise
    speech_gaps: float = 0.0  # fraction of train mixtures with spans of speech silenced (noise only)
    noise_speed: float = 0.0  # fraction of recorded train noises played faster or slower (pitch and tempo)

    def enabled(self) -> bool:
        return any((self.rir, self.rooms, self.mic_eq, self.clip, self.noise_transforms, self.synthetic_noise,
                    self.speech_gaps, self.noise_speed))

    def to_dict(self) -> dict:
        out = asdict(self)
        for late in ("speech_gaps", "noise_speed"):  # left out when off: older builds keep their dataset.json
            if not out[late]:
                del out[late]
        return out


# ---------------------------------------------------------------- filters
def biquad(kind: str, freq: float, q: float = 0.707, gain_db: float = 0.0, rate: int = SAMPLE_RATE) -> list[float]:
    """One second-order section [b0, b1, b2, 1, a1, a2] (RBJ audio-EQ cookbook):
    lowpass, highpass, lowshelf, highshelf or peaking."""
    w0 = 2 * math.pi * freq / rate
    cos, alpha, a = math.cos(w0), math.sin(w0) / (2 * q), 10 ** (gain_db / 40)
    if kind == "lowpass":
        b, den = [(1 - cos) / 2, 1 - cos, (1 - cos) / 2], [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "highpass":
        b, den = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], [1 + alpha, -2 * cos, 1 - alpha]
    elif kind == "peaking":
        b, den = [1 + alpha * a, -2 * cos, 1 - alpha * a], [1 + alpha / a, -2 * cos, 1 - alpha / a]
    elif kind in ("lowshelf", "highshelf"):
        s = 1 if kind == "lowshelf" else -1
        root = 2 * math.sqrt(a) * alpha
        b = [a * ((a + 1) - s * (a - 1) * cos + root), s * 2 * a * ((a - 1) - s * (a + 1) * cos),
             a * ((a + 1) - s * (a - 1) * cos - root)]
        den = [(a + 1) + s * (a - 1) * cos + root, -s * 2 * ((a - 1) + s * (a + 1) * cos),
               (a + 1) + s * (a - 1) * cos - root]
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    return [b[0] / den[0], b[1] / den[0], b[2] / den[0], 1.0, den[1] / den[0], den[2] / den[0]]


def apply_sos(x: np.ndarray, sos: list[float]) -> np.ndarray:
    """``x`` through the flattened second-order sections ``sos`` (none: ``x`` itself)."""
    if not len(sos):
        return x
    return signal.sosfilt(np.reshape(np.asarray(sos, dtype=np.float64), (-1, 6)), x).astype(np.float32)


def draw_mic_eq(rng: np.random.Generator) -> list[float]:
    """A microphone/channel response: a tilt (shelves), sometimes a high-pass (small
    mics, phone line) and a low-pass (band-limited channels)."""
    sections = [biquad("lowshelf", rng.uniform(150, 600), gain_db=rng.uniform(-8, 8)),
                biquad("highshelf", rng.uniform(2000, 6000), gain_db=rng.uniform(-10, 6)),
                biquad("peaking", rng.uniform(300, 4000), q=rng.uniform(0.5, 2), gain_db=rng.uniform(-6, 6))]
    if rng.random() < 0.5:
        sections.append(biquad("highpass", rng.uniform(60, 300)))
    if rng.random() < 0.3:
        sections.append(biquad("lowpass", rng.uniform(3400, 7500)))
    return [c for s in sections for c in s]


def draw_noise_eq(rng: np.random.Generator) -> list[float]:
    """A random spectral tilt and resonance for a noise recording."""
    return [*biquad("lowshelf", rng.uniform(200, 1000), gain_db=rng.uniform(-12, 12)),
            *biquad("peaking", rng.uniform(200, 6000), q=rng.uniform(0.5, 3), gain_db=rng.uniform(-9, 9))]


def gain_envelope(n: int, depth: float, hz: float, phase: float) -> np.ndarray:
    """Slow sinusoidal gain ``1 + depth·sin(2π·hz·t + phase)`` (``depth`` < 1)."""
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    return (1.0 + depth * np.sin(2 * math.pi * hz * t + phase)).astype(np.float32)


# ---------------------------------------------------------------- synthetic noise
def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit RMS (silence stays silent), as float32."""
    return (x / max(float(np.sqrt(np.mean(x**2))), 1e-12)).astype(np.float32)


def coloured_noise(n: int, beta: float, seed: int) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum (0 white, 1 pink, 2 brown, -1
    blue), unit RMS, from ``seed`` alone."""
    white = np.random.default_rng(seed).standard_normal(n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    return _unit(np.fft.irfft(spec * f ** (-beta / 2), n))


def _slow_envelope(rng: np.random.Generator, n: int, hz: float, depth_db: float) -> np.ndarray:
    """A random gain that wanders by about ±``depth_db`` at up to ``hz`` (gusts, waves, traffic)."""
    knots = max(2, int(n / SAMPLE_RATE * hz) + 2)
    db = np.interp(np.arange(n), np.linspace(0, n - 1, knots), rng.normal(0, depth_db / 2, knots))
    return 10 ** (db / 20)


def shaped_noise(n: int, seed: int) -> np.ndarray:
    """Noise with a random smooth spectrum (±15 dB at eight log-spaced frequencies over a
    random tilt), at random gusting slowly: wind, engines, fans, traffic, surf. Unit RMS."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    logf = np.log(np.maximum(f, 20.0))
    knots = np.log(np.geomspace(40, SAMPLE_RATE / 2, 8))
    db = np.interp(logf, knots, rng.uniform(-15, 15, 8)) - rng.uniform(-3, 6) * (logf - logf[-1]) / math.log(2)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * 10 ** (db / 20), n)
    if rng.random() < 0.6:
        noise = noise * _slow_envelope(rng, n, rng.uniform(0.3, 4), rng.uniform(3, 15))
    return _unit(noise)


def impulsive_noise(n: int, seed: int) -> np.ndarray:
    """Random transients over a quiet noise bed: damped resonances (dishes, cutlery, knocks)
    or short filtered bursts (typing, footsteps, rain, applause, crackling fire), at
    0.5-40 per second with levels spread over 20 dB. Unit RMS."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n + SAMPLE_RATE // 2)
    rate = float(np.exp(rng.uniform(math.log(0.5), math.log(40))))
    ringing = rng.random() < 0.5
    centre = rng.uniform(300, 6000)  # each source has its own timbre; events vary around it
    for start in np.flatnonzero(rng.random(n) < rate / SAMPLE_RATE):
        if ringing:
            length = int(rng.uniform(0.03, 0.4) * SAMPLE_RATE)
            t = np.arange(length) / SAMPLE_RATE
            freqs = centre * rng.uniform(0.5, 2, 3)
            event = sum(np.sin(2 * math.pi * fr * t + rng.uniform(0, 6.3)) for fr in freqs)
            event = event * np.exp(-t / rng.uniform(0.01, 0.15))
        else:
            length = int(rng.uniform(0.005, 0.06) * SAMPLE_RATE)
            event = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
            low = min(centre * rng.uniform(0.3, 1), 7000)
            event = signal.sosfilt(signal.butter(2, [low, min(low * rng.uniform(2, 8), 7900)], "bandpass",
                                                 fs=SAMPLE_RATE, output="sos"), event)
        event = event / max(float(np.abs(event).max()), 1e-12) * 10 ** (rng.uniform(-20, 0) / 20)
        out[start:start + length] += event
    bed = coloured_noise(n, float(rng.uniform(0, 2)), int(rng.integers(2**31)))
    return _unit(_unit(out[:n]) + bed * 10 ** (rng.uniform(-35, -15) / 20))


def tonal_noise(n: int, seed: int) -> np.ndarray:
    """Tones over a noise bed: a drifting harmonic hum (motors, engines, hoovers) or trains
    of chirps (birds, crickets, alarms, phones). Unit RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    if rng.random() < 0.5:
        f0 = np.exp(rng.uniform(math.log(40), math.log(400))) * _slow_envelope(rng, n, 0.5, 1.0)
        phase = 2 * math.pi * np.cumsum(f0) / SAMPLE_RATE
        tones = sum(rng.uniform(0.2, 1) / k ** rng.uniform(0.5, 2) * np.sin(k * phase)
                    for k in range(1, int(min(30, 7000 / f0.max())) + 1))
    else:
        centre, sweep = rng.uniform(1500, 7000), rng.uniform(-0.5, 0.5)
        period, length = rng.uniform(0.05, 1.5), rng.uniform(0.01, 0.4)
        within = np.mod(t + rng.uniform(0, period), period) / min(length, period)
        freq = centre * (1 + sweep * np.clip(within, 0, 1))
        tones = np.sin(2 * math.pi * np.cumsum(freq) / SAMPLE_RATE) * (within < 1)
        tones = tones * _slow_envelope(rng, n, 1.0, 10.0)
    bed = coloured_noise(n, float(rng.uniform(0, 2)), int(rng.integers(2**31)))
    return _unit(_unit(np.asarray(tones)) + bed * 10 ** (rng.uniform(-30, -10) / 20))


GENERATORS = {"shaped": shaped_noise, "impulses": impulsive_noise, "tonal": tonal_noise}  # and coloured_noise


def babble(talkers: list[np.ndarray], n: int, offsets: list[int]) -> np.ndarray:
    """Several utterances summed at equal power, each looped/cut to ``n`` samples."""
    out = np.zeros(n, dtype=np.float32)
    for speech, offset in zip(talkers, offsets, strict=True):
        segment = fit_noise(speech, n, offset)
        out += segment / np.float32(max(np.sqrt(power(segment)), 1e-12))
    return out


# ---------------------------------------------------------------- reverberation
def prepare_rir(h: np.ndarray) -> np.ndarray:
    """An impulse response cut to start at its direct path (its largest peak) and scaled
    so the direct path is +1: reverberant speech then stays aligned with the dry target."""
    h = np.asarray(h, dtype=np.float64)
    direct = int(np.argmax(np.abs(h)))
    if not np.isfinite(h).all() or abs(h[direct]) <= 0:
        raise ValueError("impulse response is silent or not finite")
    return (h[direct:] / h[direct]).astype(np.float32)


def simulate_rir(room_dims: list[float], rt60: float, source: list[float], mic: list[float]) -> np.ndarray:
    """Impulse response of a shoebox room (image-source method, pyroomacoustics),
    deterministic in its arguments."""
    try:
        import pyroomacoustics as pra
    except ImportError:
        raise ImportError("simulated rooms need pyroomacoustics: pip install 'speech-enhance[reverb]'") from None
    absorption, order = pra.inverse_sabine(rt60, room_dims)
    room = pra.ShoeBox(room_dims, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                       max_order=min(order, MAX_IMAGE_ORDER), air_absorption=False, use_rand_ism=False)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    return prepare_rir(room.rir[0][0])


def draw_room(rng: np.random.Generator) -> dict:
    """A shoebox room whose RT60 is reachable (absorption ≤ 1), with the talker and the
    microphone at least 0.5 m from the walls and 0.3-3 m apart."""
    while True:
        dims = [rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)]
        rt60 = rng.uniform(*RT60_RANGE)
        volume, surface = dims[0] * dims[1] * dims[2], 2 * (dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2])
        if 24 * math.log(10) * volume / (343 * surface * rt60) >= 1:  # Sabine: needs absorption > 1
            continue
        source = [rng.uniform(0.5, d - 0.5) for d in dims[:2]] + [rng.uniform(1.2, 1.9)]
        mic = [rng.uniform(0.5, d - 0.5) for d in dims[:2]] + [rng.uniform(0.7, 1.8)]
        if 0.3 <= math.dist(source, mic) <= 3.0:
            return {"room_dims": dims, "rt60": rt60, "source_pos": source, "mic_pos": mic}


def reverberate(clean: np.ndarray, h: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech, training target) of ``clean`` through the prepared RIR ``h``."""
    n = len(clean)
    speech = signal.fftconvolve(clean, h)[:n].astype(np.float32)
    if target == "dry":
        return speech, clean
    early = h[: int(EARLY_MS * SAMPLE_RATE / 1000) + 1]
    return speech, signal.fftconvolve(clean, early)[:n].astype(np.float32)


def draw_gaps(rng: np.random.Generator, n: int) -> list[int]:
    """Speech gaps for an utterance of ``n`` samples, flat [start0, stop0, start1, ...]:
    spans of 0.2-1.5 s that add up to 20-50% of it (they may overlap; at least half of the
    speech stays). Real recordings pause between phrases, read speech hardly does."""
    cover, most, total, gaps = rng.uniform(*GAP_COVER) * n, int(GAP_COVER[1] * n), 0, []
    while total < cover:
        length = min(most - total, int(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE))  # the last one may be cut short
        if length <= 0:
            break
        start = int(rng.integers(0, n - length + 1))
        gaps += [start, start + length]
        total += length
    return gaps


def cut_gaps(clean: np.ndarray, gaps: list[int]) -> np.ndarray:
    """``clean`` with each gap [start, stop) silenced, fading out before it and in after."""
    if not len(gaps):
        return clean
    gain = np.ones(len(clean), dtype=np.float32)
    fade = (0.5 + 0.5 * np.cos(np.linspace(0, math.pi, GAP_FADE))).astype(np.float32)  # 1 -> 0
    for start, stop in zip(gaps[::2], gaps[1::2], strict=True):
        gain[start:stop] = 0
        before = gain[max(0, start - GAP_FADE):start]
        np.minimum(before, fade[GAP_FADE - len(before):], out=before)
        after = gain[stop:stop + GAP_FADE]
        np.minimum(after, fade[::-1][:len(after)], out=after)
    return clean * gain


# ---------------------------------------------------------------- drawing (plan time)
def empty_fields() -> dict:
    """The variety columns of a mixture that has none: every row of a varied build has
    every column, so the manifest has one schema."""
    return {"noise_kind": "file", "noise_seed": 0, "noise_color": 0.0, "babble_paths": [], "babble_offsets": [],
            "noise2_path": "", "noise2_offset": 0, "noise2_db": 0.0, "noise_sos": [], "mod_depth": 0.0,
            "mod_hz": 0.0, "mod_phase": 0.0, "rir_kind": "", "rir_path": "", "room_dims": [], "rt60": 0.0,
            "source_pos": [], "mic_pos": [], "target": "early", "mic_sos": [], "clip_level": 0.0, "speech_gaps": [],
            "noise_speed": 1.0}


def draw(rng: np.random.Generator, variety: Variety, split: str, n_samples: int, speaker: str,
         noises: list, rirs: list[str], talkers: list) -> dict:
    """Every random choice of one mixture's variety. ``noises``: the split's noise files
    (SourceFile); ``rirs``: its RIR files; ``talkers``: its clean files (SourceFile)."""
    fields = {**empty_fields(), "target": variety.target}
    u = rng.random()
    if u < variety.rooms:
        fields.update(rir_kind="room", **draw_room(rng))
    elif u < variety.rooms + variety.rir and rirs:
        fields.update(rir_kind="file", rir_path=str(rng.choice(rirs)))
    if rng.random() < variety.mic_eq:
        fields["mic_sos"] = draw_mic_eq(rng)
    if rng.random() < variety.clip:
        fields["clip_level"] = float(rng.uniform(0.3, 0.9))
    if split != "train":
        return fields
    if rng.random() < variety.synthetic_noise:
        others = [t for t in talkers if t.speaker != speaker]  # only here: O(talkers) per mixture
        if others and rng.random() < BABBLE_SHARE:
            count = int(rng.integers(*BABBLE_TALKERS))
            picked = [others[i] for i in rng.choice(len(others), size=min(count, len(others)), replace=False)]
            fields.update(noise_kind="babble", babble_paths=[t.path for t in picked],
                          babble_offsets=[int(rng.integers(0, noise_offset_range(t.n_samples, n_samples)))
                                          for t in picked])
        else:
            kind = GENERATED[int(rng.integers(len(GENERATED)))]
            fields.update(noise_kind=kind, noise_seed=int(rng.integers(2**31)),
                          noise_color=float(rng.uniform(-1, 2)) if kind == "coloured" else 0.0)
        if rng.random() < 0.5:  # modulated: a slowly swelling and fading noise
            fields.update(mod_depth=float(rng.uniform(0.3, 0.9)), mod_hz=float(rng.uniform(0.1, 2)),
                          mod_phase=float(rng.uniform(0, 2 * math.pi)))
    elif rng.random() < variety.noise_transforms:
        fields["noise_sos"] = draw_noise_eq(rng)
        if rng.random() < 0.5:
            fields.update(mod_depth=float(rng.uniform(0.2, 0.8)), mod_hz=float(rng.uniform(0.1, 1)),
                          mod_phase=float(rng.uniform(0, 2 * math.pi)))
        if len(noises) > 1 and rng.random() < 0.5:
            second = noises[int(rng.integers(len(noises)))]
            fields.update(noise2_path=second.path, noise2_db=float(rng.uniform(-10, 0)),
                          noise2_offset=int(rng.integers(0, noise_offset_range(second.n_samples, n_samples))))
    # Drawn last, and only when asked for, so builds without them draw what they always did.
    if variety.speech_gaps and rng.random() < variety.speech_gaps:
        fields["speech_gaps"] = draw_gaps(rng, n_samples)
    if variety.noise_speed and fields["noise_kind"] == "file" and rng.random() < variety.noise_speed:
        fields["noise_speed"] = float(np.exp(rng.uniform(*np.log(SPEED_RANGE))))
    return fields


def noise_type(fields: dict, file_type: str) -> str:
    """The noise type a report groups a mixture under: synthetic classes are their own."""
    return SYNTHETIC_TYPES.get(fields["noise_kind"], file_type)


# ---------------------------------------------------------------- rendering
SPEED_MARGIN = 64  # extra samples read for a speed change, so the resampler's edge never falls short


def change_speed(x: np.ndarray, speed: float) -> np.ndarray:
    """``x`` played ``speed`` times as fast, pitch and tempo together as on a tape: about
    ``len(x) / speed`` samples. One engine, rain or café recording becomes many."""
    return resample(np.asarray(x, dtype=np.float32), SAMPLE_RATE * speed)  # read as if recorded at speed × 16 kHz


def _read(noise: np.ndarray, m: int, offset: int) -> np.ndarray:
    """``m`` samples of ``noise`` from ``offset``, drawn for another length: clamped where ``m`` runs past the end."""
    if len(noise) >= m:
        offset = min(offset, len(noise) - m)
    return fit_noise(noise, m, offset)


def speech_and_target(clean: np.ndarray, row: dict, load_rir) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(speech as it reaches the microphone, training target) for one row."""
    clean = cut_gaps(clean, row.get("speech_gaps") or [])  # before the room: reverb tails run into a gap
    if row["rir_kind"] == "room":
        h = simulate_rir(list(row["room_dims"]), float(row["rt60"]), list(row["source_pos"]), list(row["mic_pos"]))
    elif row["rir_kind"] == "file":
        h = load_rir(row["rir_path"])
    else:
        return clean, clean
    return reverberate(clean, h, row["target"])


def noise_segment(row: dict, n: int, load_noise, load_clean) -> np.ndarray:  # noqa: ANN001
    """The ``n`` noise samples of one row, before scaling to the SNR."""
    kind = row["noise_kind"]
    if kind == "coloured":
        noise = coloured_noise(n, float(row["noise_color"]), int(row["noise_seed"]))
    elif kind in GENERATORS:
        noise = GENERATORS[kind](n, int(row["noise_seed"]))
    elif kind == "babble":
        noise = babble([load_clean(p) for p in row["babble_paths"]], n, list(row["babble_offsets"]))
    else:
        speed = float(row.get("noise_speed") or 1.0)
        m = n if speed == 1.0 else math.ceil(n * speed) + SPEED_MARGIN  # samples read before the speed change
        noise = _read(load_noise(row["noise_path"]), m, int(row["noise_offset"]))
        if row["noise2_path"]:
            second = _read(load_noise(row["noise2_path"]), m, int(row["noise2_offset"]))
            ratio = math.sqrt(power(noise) / max(power(second), 1e-20) * 10 ** (float(row["noise2_db"]) / 10))
            noise = (noise + second * np.float32(ratio)).astype(np.float32)
        if speed != 1.0:
            noise = change_speed(noise, speed)[:n]
    noise = apply_sos(noise, list(row["noise_sos"]))
    if row["mod_depth"]:
        noise = noise * gain_envelope(n, float(row["mod_depth"]), float(row["mod_hz"]), float(row["mod_phase"]))
    return noise
