"""The audio encoder's geometry: how many tokens a clip of log-mel frames becomes, and how many conv chunks a
batch row runs. One computation for the model config, the model's placeholder checks, the data pipeline
(the packer), the server and the tools.

The encoder cuts a clip into chunks of ``2 * n_window`` frames (1 s for n_window 50) and runs three stride-2
convolutions (kernel 3, padding 1) over each chunk. Each halves its input rounding up, so ``r`` frames
become ``ceil(r / 8)`` tokens: a full chunk of 100 frames yields 13.
"""

from __future__ import annotations

import numpy as np


def _after_convs(frames):
    """Tokens left of ``frames`` after the three stride-2 convolutions: ceil(n/2) three times = ceil(n/8)."""
    return (frames + 7) // 8


def tokens_per_chunk(n_window: int = 50) -> int:
    """Encoder tokens a full chunk of ``2 * n_window`` frames yields (13 for 100 frames)."""
    return int(_after_convs(2 * n_window))


def encoder_token_count(num_frames, n_window: int = 50):
    """Number of audio-encoder output tokens for a clip of ``num_frames`` log-mel frames.

    ``13 * (n // 100) + ceil((n % 100) / 8)`` for n_window 50: full chunks, then the shorter tail chunk. This
    is HF's ``_get_feat_extract_output_lengths``; the batch's count of ``<|audio_pad|>`` ids must equal it.
    Examples: 1 s (100 frames) -> 13, 2 s -> 26, 9.37 s (937 frames) -> 122.

    Args:
        num_frames: valid mel frames (int or integer array).
        n_window: the audio config's ``n_window``.

    Returns:
        The token count, with the type and shape of ``num_frames``.
    """
    chunk = 2 * n_window
    n = np.asarray(num_frames)
    out = tokens_per_chunk(n_window) * (n // chunk) + _after_convs(n % chunk)
    return int(out) if np.ndim(out) == 0 and not isinstance(num_frames, np.ndarray) else out


def chunk_slots(frames_cap: int, clips: int, chunk_frames: int = 100) -> int:
    """Conv chunks the encoder runs per batch row of ``frames_cap`` mel frames holding up to ``clips`` clips.

    A clip is cut into chunks of ``chunk_frames`` from its own first frame, so one clip per row needs at most
    ``ceil(frames_cap / chunk_frames)`` chunks. Clips packed end to end each end in a partial chunk, so a packed
    row needs more chunks than its frames fill: it gets 10% more (at least one), and the packer closes a row
    whose clips would need more (`trainer.data.packing`). The slack costs that much more conv work per row
    (the convs are about a fifth of the encoder); without it a packed row's audio would be cut to whole
    seconds per clip, which caps the frame fill near 0.91 for 5.5 s clips.
    """
    base = -(-int(frames_cap) // chunk_frames)
    if clips <= 1:
        return base
    return base + max(1, -(-base // 10))
