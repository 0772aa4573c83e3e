"""The embedded default corpus: synthetic speech and noise made from pip packages alone.

Speech comes from eSpeak NG (``espeakng-loader`` ships the library and its voice data;
it runs in-process through ctypes, offline). eSpeak NG is GPL-3.0, so it is an optional
extra (``pip install 'speech-enhance[corpus]'``); nothing else in the project links it.
Noise is generated here with numpy. Output is deterministic for a given seed.

Layout::

    OUT/speech/<speaker>/<speaker>_<nn>.wav   16 kHz mono PCM16
    OUT/noise/<type>/<type>_<n>.wav
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_enhance.pipeline.audio import resample, write_audio
from speech_enhance.pipeline.dsp import SAMPLE_RATE

# Harvard sentences (IEEE Recommended Practice for Speech Quality Measurements, 1969),
# lists 1-3: public domain, phonetically balanced.
HARVARD_SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
]


@dataclass(frozen=True)
class Voice:
    name: str  # speaker folder name
    espeak_voice: str  # language + variant, as espeak_SetVoiceByName takes it
    pitch: int  # 0-100, eSpeak's base pitch
    rate: int  # words per minute


# Ten speakers: different eSpeak variants (formant sets), accents, pitches and rates.
# Only variants whose output is reproducible are used: f2, f3, f5 and Alicia add
# breath noise from a random source that is not reproducible between runs.
VOICES = [
    Voice("en_us_m1", "en-us+m1", 40, 165),
    Voice("en_us_f1", "en-us+f1", 70, 155),
    Voice("en_gb_m3", "en+m3", 35, 150),
    Voice("en_gb_f4", "en+f4", 65, 170),
    Voice("en_us_m5", "en-us+m5", 50, 140),
    Voice("en_us_linda", "en-us+linda", 60, 160),
    Voice("en_sc_m2", "en-gb-scotland+m2", 45, 155),
    Voice("en_gb_belinda", "en+belinda", 75, 145),
    Voice("en_rp_m7", "en-gb-x-rp+m7", 30, 160),
    Voice("en_us_annie", "en-us+Annie", 80, 175),
]
# Babble is a sum of voices that are not among the speakers above.
BABBLE_VOICES = ["en-us+m4", "en-us+m6", "en+m1", "en-us+m2", "en+aunty", "en+Andrea", "en-us+anika"]

NOISE_TYPES = ["white", "pink", "brown", "babble", "hum", "clicks", "modulated"]

_ESPEAK_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_POS_CHARACTER, _ESPEAK_CHARS_UTF8 = 1, 1


class ESpeak:
    """Minimal in-process eSpeak NG synthesiser (ctypes over ``espeakng-loader``)."""

    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise RuntimeError(
                "the default corpus needs eSpeak NG: pip install 'speech-enhance[corpus]' "
                "(or `make install`), which adds the GPL-3.0 espeakng-loader package"
            ) from None
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        rate = self._lib.espeak_Initialize(
            _ESPEAK_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0
        )
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data in {data_parent})")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes callbacks are freed when garbage-collected.
        self._callback = self._CALLBACK(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, _events) -> int:  # noqa: ANN001 - ctypes signature
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str, pitch: int = 50, rate: int = 160) -> np.ndarray:
        """Synthesise ``text``; returns float32 audio at :attr:`sample_rate`."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        self._lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
        self._lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        self._chunks = []
        data = text.encode() + b"\0"
        self._lib.espeak_Synth(
            data, len(data), 0, _ESPEAK_POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        self._lib.espeak_Synchronize()
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for voice {voice!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def _normalise(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    return (x * (peak / max(float(np.max(np.abs(x))), 1e-9))).astype(np.float32)


def _colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectral density ∝ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    spectrum /= freqs ** (exponent / 2.0)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with decaying odd and even harmonics and slight drift."""
    t = np.arange(n) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0]) * (1.0 + 0.002 * rng.standard_normal())
    out = np.zeros(n)
    for k in range(1, 12):
        out += rng.uniform(0.3, 1.0) / k * np.sin(2 * np.pi * k * base * t + rng.uniform(0, 2 * np.pi))
    return out + 0.02 * _colored_noise(rng, n, 1.0) / 100.0


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Keyboard-like impulsive noise: short decaying bursts of filtered noise at random times."""
    out = 0.002 * rng.standard_normal(n)
    t = 0
    while True:
        t += int(rng.exponential(0.12) * SAMPLE_RATE) + 200
        if t >= n:
            break
        length = int(rng.uniform(0.005, 0.03) * SAMPLE_RATE)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
        burst = np.convolve(burst, rng.standard_normal(8), mode="same")
        end = min(n, t + length)
        out[t:end] += rng.uniform(0.2, 1.0) * burst[: end - t]
    return out


def _modulated(rng: np.random.Generator, n: int) -> np.ndarray:
    """Non-stationary, wind-like noise: pink noise under a slow random envelope."""
    envelope = _colored_noise(rng, n, 2.0)
    envelope = (envelope - envelope.min()) / (np.ptp(envelope) + 1e-9)
    return _colored_noise(rng, n, 1.0) * (0.1 + envelope**2)


def _babble(tts: ESpeak, rng: np.random.Generator, n: int) -> np.ndarray:
    """Four to six overlapping talkers, none of them a corpus speaker."""
    out = np.zeros(n)
    for voice in rng.choice(BABBLE_VOICES, size=int(rng.integers(4, 7)), replace=False):
        sentences = rng.choice(HARVARD_SENTENCES, size=4, replace=False)
        talk = resample(tts.say(" ".join(sentences), str(voice)), tts.sample_rate)
        talk = np.tile(talk, int(np.ceil(n / len(talk))) + 1)
        start = int(rng.integers(0, len(talk) - n))
        out += _normalise(talk[start : start + n])
    return out


def make_noise(kind: str, rng: np.random.Generator, seconds: float, tts: ESpeak | None = None) -> np.ndarray:
    """One noise signal of ``kind`` (see :data:`NOISE_TYPES`), peak-normalised to 0.5."""
    n = int(seconds * SAMPLE_RATE)
    if kind in ("white", "pink", "brown"):
        x = _colored_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    elif kind == "hum":
        x = _hum(rng, n)
    elif kind == "clicks":
        x = _clicks(rng, n)
    elif kind == "modulated":
        x = _modulated(rng, n)
    elif kind == "babble":
        if tts is None:
            raise ValueError("babble noise needs the speech synthesiser")
        x = _babble(tts, rng, n)
    else:
        raise ValueError(f"unknown noise type {kind!r}; choose from {NOISE_TYPES}")
    return _normalise(x)


def make_corpus(
    out_dir: str | os.PathLike,
    seed: int = 0,
    sentences_per_speaker: int = 6,
    noise_files_per_type: int = 2,
    noise_seconds: float = 4.0,
) -> dict[str, int]:
    """Write the default corpus to ``out_dir``; returns counts of files written.

    eSpeak NG keeps synthesis state from one utterance to the next inside a process
    (the same sentence comes out a few samples different the second time), so the
    corpus is synthesised in a fresh child process: the same seed then always gives
    byte-identical files."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(
            _write_corpus, str(out_dir), seed, sentences_per_speaker, noise_files_per_type, noise_seconds
        ).result()


def _write_corpus(
    out_dir: str, seed: int, sentences_per_speaker: int, noise_files_per_type: int, noise_seconds: float
) -> dict[str, int]:
    out = Path(out_dir)
    tts = ESpeak()
    n_speech = 0
    for index, voice in enumerate(VOICES):
        # Each speaker reads a different, overlapping window of the sentence list.
        for k in range(sentences_per_speaker):
            text = HARVARD_SENTENCES[(index * 3 + k) % len(HARVARD_SENTENCES)]
            audio = resample(tts.say(text, voice.espeak_voice, voice.pitch, voice.rate), tts.sample_rate)
            write_audio(out / "speech" / voice.name / f"{voice.name}_{k:02d}.wav", _normalise(audio, 0.7))
            n_speech += 1
    n_noise = 0
    for kind in NOISE_TYPES:
        for k in range(noise_files_per_type):
            noise_rng = np.random.default_rng([seed, NOISE_TYPES.index(kind), k])
            write_audio(out / "noise" / kind / f"{kind}_{k}.wav", make_noise(kind, noise_rng, noise_seconds, tts))
            n_noise += 1
    return {"speech_files": n_speech, "speakers": len(VOICES), "noise_files": n_noise, "noise_types": len(NOISE_TYPES)}
