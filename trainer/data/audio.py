"""Audio features: the Whisper-compatible 128-bin log-mel and the audio encoder's token count.

One place for both, because the loader (prompt length), the model (placeholder check) and the server all need
the same numbers. The log-mel matches `transformers.WhisperFeatureExtractor(feature_size=128)` applied to one
clip at a time (see docs/data.md and /work/shared/docs/qwen3-omni-thinker.md §6):

1. reflect-pad ``N_FFT // 2`` samples on both sides (centred frames), frame every ``HOP`` samples;
2. periodic Hann window, real FFT of ``N_FFT`` points, power spectrum;
3. 128 triangular filters on the Slaney mel scale from 0 to 8 kHz, Slaney area-normalised;
4. drop the last frame, so a clip of N samples gives ``N // HOP`` frames;
5. ``L = log10(max(mel, 1e-10))``, ``L = max(L, max(L) - 8)`` over the clip, output ``(L + 4) / 4``.

Features are computed per clip rather than on a padded batch: in a padded batch HF's last frames see zeros
instead of the reflection and the frame count becomes ceil(N / 160), which makes features depend on the batch.

The implementation is vectorised in float32: all frames in one strided view, one batched FFT (scipy, float32)
and one sparse product with the filterbank.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

from trainer.data.audio_io import SAMPLE_RATE

N_FFT = 400
HOP = 160
NUM_MEL_BINS = 128
FRAMES_PER_SECOND = SAMPLE_RATE // HOP  # 100
# Dynamic range kept below the loudest bin of a clip, in log10 units (80 dB), and the output affine map.
_DYNAMIC_RANGE = 8.0
_LOG_FLOOR = 1e-10
_BLOCK_FRAMES = 256


def _hz_to_mel_slaney(freq_hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    freq_hz = np.asarray(freq_hz, dtype=np.float64)
    linear = 3.0 * freq_hz / 200.0
    mels_at_1k = 15.0
    log_step = math.log(6.4) / 27.0
    with np.errstate(divide="ignore"):
        logarithmic = mels_at_1k + np.log(np.maximum(freq_hz, 1e-12) / 1000.0) / log_step
    return np.where(freq_hz >= 1000.0, logarithmic, linear)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    linear = 200.0 * mels / 3.0
    log_step = math.log(6.4) / 27.0
    logarithmic = 1000.0 * np.exp(log_step * (mels - 15.0))
    return np.where(mels >= 15.0, logarithmic, linear)


@functools.cache
def mel_filters(
    num_mel_bins: int = NUM_MEL_BINS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Triangular Slaney-normalised mel filterbank, float32 [num_mel_bins, n_fft // 2 + 1].

    Filter m rises from mel point m to m+1 and falls to m+2 (points evenly spaced in mel from 0 Hz to
    Nyquist) and is scaled by 2 / (f[m+2] - f[m]) so each filter has unit area in Hz.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = np.linspace(
        _hz_to_mel_slaney(np.array(0.0)), _hz_to_mel_slaney(np.array(sample_rate / 2.0)), num_mel_bins + 2
    )
    hz_points = _mel_to_hz_slaney(mel_points)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (fft_freqs[None, :] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (upper - lower)
    return np.ascontiguousarray(filters, dtype=np.float32)


@functools.cache
def _mel_filters_sparse():
    # Each FFT bin feeds at most two filters (394 of 25,728 weights are non-zero). A sparse product is
    # faster than BLAS here and, unlike OpenBLAS, never spins up threads that fight the loader's threads.
    import scipy.sparse

    return scipy.sparse.csr_matrix(mel_filters())


@functools.cache
def _hann_periodic(length: int = N_FFT) -> np.ndarray:
    k = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * k / length)).astype(np.float32)


def num_frames(num_samples: int) -> int:
    """Number of log-mel frames `log_mel` gives for a clip of ``num_samples`` samples."""
    return int(num_samples) // HOP


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Whisper-compatible 128-bin log-mel of one 16 kHz clip.

    Args:
        wave: mono waveform at 16 kHz, shape [N] (any float dtype; computed in float32).

    Returns:
        float32 [128, N // 160]. A clip shorter than 160 samples gives zero frames.
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    frames = num_frames(x.size)
    if frames == 0:
        return np.zeros((NUM_MEL_BINS, 0), np.float32)
    half = N_FFT // 2
    padded = np.pad(x, half, mode="reflect") if x.size > half else _reflect_pad_short(x, half)
    # Frame t covers padded[t*HOP : t*HOP + N_FFT]; the last centred frame is dropped (HF does the same).
    windows_tk = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[: frames * HOP : HOP]
    mel_mt = np.empty((NUM_MEL_BINS, frames), np.float32)
    filters, window = _mel_filters_sparse(), _hann_periodic()
    # In blocks of frames, so the windowed frames and their spectrum (~1.6 MB each) stay in cache.
    for start in range(0, frames, _BLOCK_FRAMES):
        block = windows_tk[start : start + _BLOCK_FRAMES]
        # scipy's FFT keeps float32 (numpy's upcasts to complex128, ~10x slower here); one worker keeps the
        # loader's threads from oversubscribing the cores.
        spectrum_tf = scipy.fft.rfft(block * window, axis=-1, workers=1)
        power_tf = spectrum_tf.real**2 + spectrum_tf.imag**2
        mel_mt[:, start : start + block.shape[0]] = filters @ power_tf.T
    log_mt = np.log10(np.maximum(mel_mt, _LOG_FLOOR, out=mel_mt), out=mel_mt)
    np.maximum(log_mt, log_mt.max() - _DYNAMIC_RANGE, out=log_mt)
    log_mt += 4.0
    log_mt *= 0.25
    return log_mt


def _reflect_pad_short(x: np.ndarray, half: int) -> np.ndarray:
    # np.pad reflects repeatedly when the pad is longer than the signal; that is well defined but differs
    # from torch (which refuses). Clips this short carry no speech; any consistent answer will do.
    return np.pad(x, half, mode="reflect") if x.size > 1 else np.pad(x, half, mode="constant")
