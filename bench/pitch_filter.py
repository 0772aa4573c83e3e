"""Does RNNoise's pitch (comb) filter, applied around a mask network's mask, buy STOI?

A real mask on a 31 Hz-bin STFT keeps the noise between a voice's harmonics where its mask
is smooth over frequency (`bench/fine_structure.py`), and a magnitude mask cannot use the
phase. RNNoise adds the pitch-delayed input to each frame before its gains (Valin, 2018):
the periodic speech adds coherently, the noise does not. Per band b (Opus's bands up to
8 kHz, triangular), with p_b the normalised correlation of the frame X and its pitch-delayed
version P, and g_b the band's gain: r_b = 1 if p_b > g_b else sqrt(p²(1-g²) / (g²(1-p²))),
X' = X + r_b sqrt(E_x/E_p) P, renormalised to X's band energies, then the mask.

Variants: the pitch found on the noisy input (RNNoise) or on the network's output (cleaner);
the comb applied to the noisy input before the mask ("pre") or to the enhanced spectrum with
the enhanced signal delayed ("post"); and RNNoise's gain release, g_t = max(g_t, a g_{t-1})
("decay"). Each mixture of a split is rendered again from the
manifest, the network runs once, and every variant is scored on the same mask.

    python bench/pitch_filter.py --data DATA --model FILE [--split val] [--limit N]

Prints JSON: per variant, mean PESQ, STOI, SI-SDR and the paired difference from the mask
as is (mean ± standard error), overall and STOI per SNR.
"""

from __future__ import annotations

import numpy as np
import torch
from mask_shape import run  # the sibling bench's command line and scoring

from speech_enhance.pipeline import dsp

EDGES_HZ = (0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000, 2400, 2800, 3200, 4000, 4800, 5600, 6800, 8000)
MIN_LAG, MAX_LAG = 32, 320  # samples: pitches of 500 to 50 Hz
OCTAVE_TOLERANCE = 0.9  # the shortest lag whose correlation is this close to the best is the period
EPS = 1e-12
HANN = torch.hann_window(dsp.N_FFT, periodic=True)  # the STFT's window


def band_weights() -> torch.Tensor:
    """[points, 257]: each bin split linearly between the two band edges around it."""
    hz = torch.arange(dsp.N_BINS, dtype=torch.float64) * dsp.SAMPLE_RATE / dsp.N_FFT
    edges = torch.tensor(EDGES_HZ, dtype=torch.float64)
    below = (torch.searchsorted(edges, hz, right=True) - 1).clamp(max=len(EDGES_HZ) - 2)
    frac = (hz - edges[below]) / (edges[below + 1] - edges[below])
    w = torch.zeros(len(EDGES_HZ), dsp.N_BINS, dtype=torch.float64)
    w[below, torch.arange(dsp.N_BINS)] = 1 - frac
    w[below + 1, torch.arange(dsp.N_BINS)] += frac
    return w.float()


def _padded(x: np.ndarray) -> torch.Tensor:
    """``x`` as the STFT pads it (reflect, half a window), with MAX_LAG zeros before."""
    t = torch.from_numpy(np.pad(np.asarray(x, np.float32), dsp.N_FFT // 2, mode="reflect"))
    return torch.cat([torch.zeros(MAX_LAG), t])


def pitch_lags(x: np.ndarray, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per STFT frame, the pitch period in samples and its normalised (Hann-weighted)
    correlation, from ``x``: the lag in [MIN_LAG, MAX_LAG] of the best correlation of the
    frame with the signal that many samples earlier, or the shortest one nearly as good
    (a period's multiples correlate as well)."""
    sp = _padded(x)
    w = HANN
    idx = torch.arange(frames)[:, None] * dsp.HOP
    cur = sp[MAX_LAG + idx + torch.arange(dsp.N_FFT)]  # [frames, 512]
    block = sp[idx + torch.arange(MAX_LAG + dsp.N_FFT)]  # [frames, MAX_LAG + 512]: the frame and MAX_LAG before
    n = 2048
    spec_block, spec_block2 = torch.fft.rfft(block, n), torch.fft.rfft(block.square(), n)
    xc = torch.fft.irfft(torch.conj(torch.fft.rfft(w * cur, n)) * spec_block, n)  # xc[m] = Σ w cur[i] block[m + i]
    en = torch.fft.irfft(torch.conj(torch.fft.rfft(w, n))[None] * spec_block2, n)
    lags = torch.arange(MIN_LAG, MAX_LAG + 1)
    m = MAX_LAG - lags  # offset in block of the signal `lag` samples earlier
    corr = xc[:, m] / torch.sqrt((w * cur.square()).sum(1, keepdim=True) * en[:, m] + EPS)
    best = corr.max(dim=1, keepdim=True).values
    local = torch.ones_like(corr, dtype=torch.bool)
    local[:, 1:] &= corr[:, 1:] >= corr[:, :-1]
    local[:, :-1] &= corr[:, :-1] >= corr[:, 1:]
    ok = local & (corr >= OCTAVE_TOLERANCE * best)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # the shortest such lag (best itself is one)
    return lags[first], corr[torch.arange(frames), first]


def delayed_spectrum(x: np.ndarray, lags: torch.Tensor) -> torch.Tensor:
    """[257, frames]: each STFT frame of ``x`` taken ``lags[t]`` samples earlier."""
    sp = _padded(x)
    start = MAX_LAG + torch.arange(len(lags)) * dsp.HOP - lags
    frames = sp[start[:, None] + torch.arange(dsp.N_FFT)] * HANN
    return torch.fft.rfft(frames).T


def comb(spec: torch.Tensor, delayed: torch.Tensor, gain: torch.Tensor, w: torch.Tensor,
         scale: float = 1.0) -> torch.Tensor:
    """RNNoise's pitch_filter on [257, frames] spectra: ``gain`` [points, frames] per band."""
    ex = w @ spec.abs().square()
    ep = w @ delayed.abs().square()
    exp = (w @ (spec * delayed.conj()).real) / torch.sqrt(ex * ep + EPS)
    p2, g2 = exp.clamp(0, 1).square(), gain.clamp(0, 1).square()
    r = torch.sqrt((p2 * (1 - g2) / (1e-3 + g2 * (1 - p2))).clamp(0, 1))
    r = torch.where(exp > gain, 1.0, r) * torch.sqrt(ex / (ep + EPS)) * scale
    out = spec + (w.T @ r) * delayed
    norm = torch.sqrt(ex / (w @ out.abs().square() + EPS))
    return out * (w.T @ norm)


def release(mask: torch.Tensor, decay: float) -> torch.Tensor:
    """RNNoise's gain smoothing, g_t = max(g_t, decay · g_{t-1}) frame by frame: a gain
    falls by at most ``decay`` per hop, so the decay of a syllable is not cut off."""
    out = mask.clone()
    for t in range(1, out.shape[-1]):
        out[:, t] = torch.maximum(out[:, t], decay * out[:, t - 1])
    return out


def variants(noisy: np.ndarray, spec: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """The mask as is ("identity") and each variant, as waveforms."""
    w = band_weights()
    frames = spec.shape[-1]
    enhanced_spec = spec * mask
    enhanced = dsp.istft(enhanced_spec, len(noisy)).numpy()
    power = spec.abs().square()
    gain = torch.sqrt((w @ (mask.square() * power)) / (w @ power + EPS))
    out = {"identity": enhanced}
    for decay in (0.5, 0.66, 0.8):
        out[f"decay_{decay}"] = dsp.istft(spec * release(mask, decay), len(noisy)).numpy()
    for source_name, source in (("noisy", noisy), ("enh", enhanced)):
        lags, _ = pitch_lags(source, frames)
        p_noisy = delayed_spectrum(noisy, lags)
        for scale in (1.0, 0.5):
            pre = comb(spec, p_noisy, gain, w, scale) * mask
            out[f"pre_{source_name}_{scale}"] = dsp.istft(pre, len(noisy)).numpy()
        if source_name == "enh":
            post = comb(enhanced_spec, delayed_spectrum(enhanced, lags), gain, w)
            out["post_enh_1.0"] = dsp.istft(post, len(noisy)).numpy()
    return out


def main() -> None:
    run(__doc__.split("\n")[0], variants, "variant")


if __name__ == "__main__":
    main()
