"""Audio front-end helpers shared by the data pipeline and the model."""

from __future__ import annotations

import numpy as np


def encoder_token_count(num_frames, n_window: int = 50):
    """Number of audio-encoder output tokens for a clip of ``num_frames`` log-mel frames.

    The encoder cuts a clip into chunks of ``2 * n_window`` frames (1 s for n_window 50) and runs three
    stride-2 convolutions over each chunk, so a full chunk yields 13 tokens and the shorter tail chunk of
    ``r`` frames yields ``ceil(r / 8)``: ``13 * (n // 100) + ceil((n % 100) / 8)`` for n_window 50. This is
    HF's ``_get_feat_extract_output_lengths``; the batch's count of ``<|audio_pad|>`` ids must equal it.

    Args:
        num_frames: valid mel frames (int or integer array).
        n_window: the audio config's ``n_window``.

    Returns:
        The token count, with the type and shape of ``num_frames``.
    """
    chunk = 2 * n_window
    full = chunk
    for _ in range(3):
        full = (full - 1) // 2 + 1
    n = np.asarray(num_frames)
    tail = n % chunk
    out = full * (n // chunk) + (tail + 7) // 8
    return int(out) if np.ndim(out) == 0 and not isinstance(num_frames, np.ndarray) else out
