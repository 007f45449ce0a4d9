"""Reading audio files into the model's input format: mono float32 at 16 kHz.

Used by `sawt transcribe`, the server and the demo synthesiser, so that every entry point accepts the same
formats (whatever libsndfile reads: wav, flac, ogg, mp3) and fails with the same clear messages.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np

# The one definition of the model's audio rate (the Whisper front end's; the Examples' schema).
SAMPLE_RATE = 16_000
# Below 1 kHz nothing intelligible survives; above 384 kHz is not a real recording.
MIN_SOURCE_RATE = 1_000
MAX_SOURCE_RATE = 384_000
# Peak amplitude below which a clip counts as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
    """The audio cannot be used; the message says why in words a user can act on."""


def resample(wave: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited polyphase resampling (scipy), exact for rational rate ratios."""
    if source_rate == target_rate:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, source_rate)
    out = resample_poly(wave.astype(np.float64), ratio.numerator, ratio.denominator)
    return out.astype(np.float32)


def decode_audio(source: str | Path | bytes, *, reject_silence: bool = True) -> np.ndarray:
    """Decodes a file path or encoded bytes to mono float32 at 16 kHz.

    Raises:
        AudioError: unreadable or unsupported data, no samples, an absurd sample rate, non-finite samples, or
            (when ``reject_silence``) a clip that is silent throughout.
    """
    import soundfile as sf

    name = "audio" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise AudioError(f"{name}: empty file")
    try:
        data, rate = sf.read(
            io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="float32", always_2d=True
        )
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{name}: cannot decode audio ({err}); supported: wav, flac, ogg, mp3") from None
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is outside {MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz")
    if data.shape[0] == 0:
        raise AudioError(f"{name}: the file holds no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: samples contain NaN or Inf")
    if reject_silence and float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioError(f"{name}: the audio is silent")
    return resample(wave, int(rate))
