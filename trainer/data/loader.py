"""The Grain input pipeline: ArrayRecord speech records -> fixed-shape batch dicts (interface 1).

Per split, the pipeline is

    global batch plan (trainer/data/batching.py, identical on every process)
      -> this process's rows of each global batch
      -> grain.MapDataset over those items .map(featurise) .to_iter_dataset(threads, prefetch)

wrapped in `BatchIterator`, which walks the epochs (each with its own shuffle) and whose ``get_state()`` /
``set_state()`` (a small JSON dict: epoch + Grain's position in it) resume at exactly the batch that would have
come next. Featurising a batch reads its records, decodes them (`trainer.data.example.decode_speech`), computes
each clip's log-mel on its own (`trainer.data.audio.log_mel`), tokenises the transcript and builds the ASR prompt
with the tokenizer's chat template (`trainer.data.text`), and pads everything to the bucket's static shape.

A record that cannot be used does not stop training: its row becomes a padding row (no tokens, no loss) and
``batch["meta"]["status"]`` says why (``bad_record:<reason>``, ``text_too_long``, ``audio_too_long``,
``special_token_in_text``, ``bad_prompt``: a language the config has no instruction for, or a context holding
special tokens);
`BatchIterator.skipped` keeps running totals per reason for the ``sawt_train_bad_records_total`` metric.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from trainer.data import batching
from trainer.data.audio import HOP, NUM_MEL_BINS, log_mel
from trainer.data.batching import PAD_ROW, SplitIndex
from trainer.data.config import DataConfig
from trainer.data.packing import ClipCosts, RowCapacity
from trainer.data.shards import DataError, split_shards
from trainer.data.text import (
    PAD_ID,
    PromptError,
    PromptStyle,
    Tokenizer,
    clip_context,
    load_tokenizer,
    prompt_length,
    training_row,
)
from trainer.model.geometry import chunk_slots, encoder_token_count

STATUS_OK = "ok"
STATUS_PAD = "pad"
MAX_CONTEXT_TOKENS = 224  # a record's context is cut to its last this many tokens (as Whisper's prompt)


# ------------------------------------------------------------------------------------------- the index


def read_index(root: str | Path, split: str, shards: Sequence[Path] | None = None) -> SplitIndex:
    """Loads ``ROOT/<split>/index.npz`` (written by `sawt data convert`), or scans the records without it.

    Raises:
        DataError: the index does not match the shards (a stale index next to re-converted data).
    """
    shards = list(shards) if shards is not None else split_shards(root, split)
    path = Path(root) / split / "index.npz"
    if not path.is_file():
        return scan_index(shards)
    index, names = load_index_file(path)
    if names is not None and names != [p.name for p in shards]:
        raise DataError(f"{path}: lists shards {names} but the directory holds {[p.name for p in shards]}")
    return index


def load_index_file(path: str | Path) -> tuple[SplitIndex, list[str] | None]:
    """An ``index.npz`` on its own: the index and the shard names it lists (None in older files)."""
    with np.load(path, allow_pickle=False) as npz:
        texts = None
        if "text_utf8" in npz.files:
            blob, bounds = bytes(npz["text_utf8"]), npz["text_offsets"].tolist()
            texts = tuple(blob[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds))
        index = SplitIndex(
            duration=np.asarray(npz["duration"], np.float32),
            source_id=np.asarray(npz["source_id"], np.int32),
            sources=tuple(str(s) for s in npz["sources"]),
            texts=texts,
        )
        names = [str(s) for s in npz["shards"]] if "shards" in npz.files else None
    return index, names


def scan_index(shards: Sequence[Path]) -> SplitIndex:
    """Builds the index by reading every record's metadata (slow for big splits; the converter's index.npz
    avoids it). Undecodable records get duration 0, so the duration filter leaves them out."""
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import BadRecord, peek_speech_meta, peek_speech_text

    durations: list[float] = []
    names: list[str] = []
    texts: list[str] = []
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        try:
            for payload in reader.read_all():
                try:
                    meta = peek_speech_meta(payload)
                    text = peek_speech_text(payload)
                    durations.append(meta.audio_len / meta.sample_rate)
                    names.append(meta.dataset_name)
                    texts.append(text)
                except BadRecord:
                    durations.append(0.0)
                    names.append("")
                    texts.append("")
        finally:
            reader.close()
    sources = sorted(set(names))
    ids = {n: i for i, n in enumerate(sources)}
    return SplitIndex(
        duration=np.asarray(durations, np.float32),
        source_id=np.asarray([ids[n] for n in names], np.int32),
        sources=tuple(sources),
        texts=tuple(texts),
    )


# ------------------------------------------------------------------------------------------ featurise


def empty_batch(rows: int, audio_frames: int, text_tokens: int, clips: int = 0) -> dict[str, Any]:
    """A batch of ``rows`` padding rows in a bucket's shape (interface 1).

    ``clips`` > 0 gives packed rows: ``segment_ids`` [rows, S] and the audio arrays as clip slots
    [rows, clips]; ``meta`` then holds one entry per clip slot (row-major) and a ``row`` list.
    """
    per_clip = (rows, clips) if clips else (rows,)
    slots = rows * max(clips, 1)
    batch = {
        "input_ids": np.full((rows, text_tokens), PAD_ID, np.int32),
        "targets": np.full((rows, text_tokens), PAD_ID, np.int32),
        "loss_mask": np.zeros((rows, text_tokens), np.float32),
        "token_mask": np.zeros((rows, text_tokens), bool),
        "positions": np.zeros((rows, text_tokens), np.int32),
        "audio_mel": np.zeros((rows, NUM_MEL_BINS, audio_frames), np.float32),
        "audio_frames": np.zeros(per_clip, np.int32),
        "audio_tokens": np.zeros(per_clip, np.int32),
        "audio_offset": np.zeros(per_clip, np.int32),
        "meta": {
            "sample_id": [""] * slots,
            "dataset_name": [""] * slots,
            "text": [""] * slots,
            "duration": [0.0] * slots,
            "status": [STATUS_PAD] * slots,
        },
    }
    if clips:
        batch["segment_ids"] = np.zeros((rows, text_tokens), np.int32)
        batch["meta"]["row"] = [r for r in range(rows) for _ in range(clips)]
    return batch


def batch_shapes(config: DataConfig, rows: int) -> list[dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """Shape and dtype of every array of a training batch, per shape it can take (for ahead-of-time
    compilation): one per bucket, or with ``packing`` the packed rows of the largest bucket."""
    if config.packing:
        frames, tokens = config.buckets[-1]
        shapes = [empty_batch(rows, frames, tokens, config.max_clips_per_row)]
    else:
        shapes = [empty_batch(rows, frames, tokens) for frames, tokens in config.buckets]
    return [{k: (v.shape, v.dtype) for k, v in batch.items() if k != "meta"} for batch in shapes]


class Featuriser:
    """Turns one planned batch (bucket, record indices) into a batch dict; safe to call from many threads.

    Rows [R] hold one clip each; rows [R, C] are packed (trainer/data/packing.py): the clips of a row go end
    to end, each with its own prompt, transcript, positions from 0 and segment id k + 1, its log-mel right
    after the previous clip's. A clip that cannot be used leaves its slot empty and the rest of the row
    closes up.
    """

    def __init__(
        self,
        source: Any,
        tokenizer: Tokenizer,
        buckets: Sequence[tuple[int, int]],
        style: PromptStyle,
        n_window: int = 50,
        *,
        language_field: str | None = None,
        context_field: str | None = None,
        max_context_tokens: int = MAX_CONTEXT_TOKENS,
    ):
        self.source = source
        self.tok = tokenizer
        self.buckets = [tuple(b) for b in buckets]
        self.style = style
        self.instruction = style.instruction
        self.n_window = n_window
        self.language_field = language_field
        self.context_field = context_field
        self.max_context_tokens = max_context_tokens
        self._optional = tuple(f for f in (language_field, context_field) if f)
        self._audio_ids = {tokenizer.audio_pad_id, tokenizer.audio_start_id, tokenizer.audio_end_id}
        # Render the prompt once here, not concurrently in the worker threads.
        for text in sorted({style.instruction, *style.languages.values()}):
            prompt_length(tokenizer, 0, text)
        for frames, tokens in self.buckets:
            need = prompt_length(tokenizer, encoder_token_count(frames, n_window), style.instruction) + 2
            if need > tokens:
                raise DataError(
                    f"bucket ({frames}, {tokens}): the prompt alone takes {need - 2} tokens for {frames} frames, "
                    f"so text_tokens={tokens} leaves no room for a transcript; raise it to at least {need + 16}"
                )

    def __call__(self, item: tuple[int, np.ndarray]) -> dict[str, Any]:
        from trainer.data.example import BadRecord, decode_speech

        bucket, rows = item
        frames_cap, tokens_cap = self.buckets[bucket]
        packed = rows.ndim == 2
        clips = rows.shape[1] if packed else 1
        batch = empty_batch(rows.shape[0], frames_cap, tokens_cap, clips if packed else 0)
        meta = batch["meta"]
        slots = rows.reshape(-1)  # slot i = (row i // clips, clip i % clips)
        wanted = [(i, int(r)) for i, r in enumerate(slots) if r != PAD_ROW]
        payloads = self._read([r for _, r in wanted])
        records = {}
        for (i, _), payload in zip(wanted, payloads, strict=True):
            try:
                records[i] = decode_speech(payload, optional_text=self._optional)
            except BadRecord as err:
                meta["status"][i] = f"bad_record:{err.reason}"
        order = sorted(records)
        transcripts = dict(zip(order, self.tok.encode_batch([records[i].text for i in order]), strict=True))
        # Per row: tokens, frames and clips used so far (packed rows fill from the left).
        used_tokens = [0] * rows.shape[0]
        used_frames = [0] * rows.shape[0]
        used_clips = [0] * rows.shape[0]
        chunk = 2 * self.n_window
        max_chunks = chunk_slots(frames_cap, clips, chunk)
        used_chunks = [0] * rows.shape[0]
        for i in order:
            rec, transcript = records[i], transcripts[i]
            b = i // clips
            meta["sample_id"][i] = rec.sample_id
            meta["dataset_name"][i] = rec.dataset_name
            meta["text"][i] = rec.text
            meta["duration"][i] = float(rec.audio.size) / rec.sample_rate
            frames = rec.audio.size // HOP
            t0, f0, k = used_tokens[b], used_frames[b], used_clips[b]
            need_chunks = -(-frames // chunk)
            if f0 + frames > frames_cap or used_chunks[b] + need_chunks > max_chunks:
                meta["status"][i] = "audio_too_long"  # the index's duration disagreed with the record
                continue
            if self._audio_ids.intersection(transcript):
                # The Rust tokenizer turns "<|audio_pad|>" in text into the control token; a row with one
                # would break the placeholder count the model relies on.
                meta["status"][i] = "special_token_in_text"
                continue
            n_tokens = encoder_token_count(frames, self.n_window)
            try:
                instruction, context = self._prompt_of(rec)
            except PromptError:
                meta["status"][i] = "bad_prompt"
                continue
            row = training_row(self.tok, n_tokens, transcript, instruction, context)
            n = row.input_ids.size
            if t0 + n > tokens_cap:
                meta["status"][i] = "text_too_long"
                continue
            at = (b, k) if packed else b
            batch["audio_mel"][b, :, f0 : f0 + frames] = log_mel(rec.audio)
            batch["audio_frames"][at] = frames
            batch["audio_tokens"][at] = n_tokens
            batch["audio_offset"][at] = t0 + row.audio_offset
            span = slice(t0, t0 + n)
            batch["input_ids"][b, span] = row.input_ids
            batch["targets"][b, span] = row.targets
            batch["loss_mask"][b, span] = row.loss_mask
            batch["token_mask"][b, span] = True
            batch["positions"][b, span] = np.arange(n, dtype=np.int32)
            if packed:
                batch["segment_ids"][b, span] = k + 1
            used_tokens[b], used_frames[b], used_clips[b] = t0 + n, f0 + frames, k + 1
            used_chunks[b] += need_chunks
            meta["status"][i] = STATUS_OK
        return batch

    def _prompt_of(self, rec: Any) -> tuple[str, str | None]:
        """The record's instruction (by its language, if the data names one) and context."""
        language = rec.extra.get(self.language_field) if self.language_field else None
        context = rec.extra.get(self.context_field) if self.context_field else None
        return self.style.instruction_for(language), clip_context(self.tok, context, self.max_context_tokens)

    def _read(self, indices: list[int]) -> list[bytes]:
        if not indices:
            return []
        getitems = getattr(self.source, "__getitems__", None)
        return list(getitems(indices)) if getitems else [self.source[i] for i in indices]


# ------------------------------------------------------------------------------------------- iterator


class BatchIterator(grain.DatasetIterator):
    """Batches of one process over epochs; checkpointable with ``get_state()`` / ``set_state()``.

    Compatible with ``grain.checkpoint.CheckpointSave/CheckpointRestore`` (the state is a JSON-able dict).

    Attributes:
        skipped: running count of clips left out, by reason (not part of the state): those of the consumed
            batches, plus, when an epoch starts, those its plan could not place (packing: ``text_too_long``).
        epoch: the epoch the next batch comes from.
    """

    def __init__(
        self,
        plan: Callable[[int], batching.EpochPlan],
        featurise: Featuriser,
        process_index: int,
        process_count: int,
        read_options: grain.ReadOptions,
        num_epochs: int | None,
    ):
        super().__init__()
        self._plan = plan
        self._featurise = featurise
        self._process_index = process_index
        self._process_count = process_count
        self._read_options = read_options
        self._num_epochs = num_epochs
        self._inner: grain.DatasetIterator | None = None
        self.epoch = 0
        self.skipped: Counter[str] = Counter()

    def _open(self, epoch: int) -> None:
        planned = self._plan(epoch)
        if not planned.batches:
            raise DataError("the split has no records left after the duration filter and bucketing")
        self.skipped.update(planned.dropped)
        items = [
            (p.bucket, batching.process_rows(p.rows, self._process_index, self._process_count))
            for p in planned.batches
        ]
        dataset = grain.MapDataset.source(items).map(self._featurise)
        self._inner = iter(dataset.to_iter_dataset(self._read_options))

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._num_epochs is not None and self.epoch >= self._num_epochs:
                raise StopIteration
            if self._inner is None:
                self._open(self.epoch)
            try:
                batch = next(self._inner)
            except StopIteration:
                self.epoch += 1
                self._inner = None
                continue
            for status in batch["meta"]["status"]:
                if status not in (STATUS_OK, STATUS_PAD):
                    self.skipped[status.removeprefix("bad_record:")] += 1
            return batch

    def get_state(self) -> dict[str, Any]:
        """Where the iterator stands: ``{"epoch": e, "inner": Grain's state within epoch e or None}``."""
        return {"epoch": self.epoch, "inner": None if self._inner is None else self._inner.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes at the batch that followed the one consumed when ``state`` was taken."""
        self.epoch = int(state["epoch"])
        self._inner = None
        if state.get("inner") is not None and (self._num_epochs is None or self.epoch < self._num_epochs):
            self._open(self.epoch)
            self._inner.set_state(state["inner"])


def row_tokens(
    index: SplitIndex,
    tok: Tokenizer,
    style: PromptStyle,
    n_window: int = 50,
    *,
    language_field: str | None = None,
    context_field: str | None = None,
    max_context_tokens: int = MAX_CONTEXT_TOKENS,
) -> np.ndarray:
    """int64 [N]: the length of each record's training row (prompt + transcript + ``<|im_end|>``), from the
    index's transcripts (one batched tokenizer call); never shorter than the row the featuriser builds.

    The index holds no per-record language or context, so with ``language_field`` the prompt counts as the
    longest instruction's, and with ``context_field`` as holding a context of ``max_context_tokens`` (the
    most `clip_context` keeps): a bound that costs fill when most records have short or no contexts.

    Raises:
        DataError: the index holds no transcripts.
    """
    texts = index.texts
    if texts is None:
        raise DataError("data.packing needs each clip's transcript in the split's index")
    instructions = [style.instruction, *style.languages.values()] if language_field else [style.instruction]
    prompt = max(prompt_length(tok, 0, text) for text in instructions)
    if context_field:
        # A system turn's scaffolding, measured on a one-token context, plus the longest context kept; the
        # +1 covers a merge across the context's edges.
        probe = "x"
        turn = prompt_length(tok, 0, style.instruction, probe) - prompt_length(tok, 0, style.instruction)
        prompt += turn - len(tok.encode(probe)) + max_context_tokens + 1
    audio = encoder_token_count(index.num_frames(), n_window)
    transcript = np.fromiter((len(ids) for ids in tok.encode_batch(list(texts))), np.int64, len(texts))
    return prompt + audio + transcript + 1


def make_loader(
    config: DataConfig,
    tokenizer: Tokenizer | str | Path,
    split: str,
    process_index: int,
    process_count: int,
    seed: int,
    rows_per_process: int,
    *,
    train: bool | None = None,
    num_epochs: int | None = None,
    n_window: int = 50,
) -> BatchIterator:
    """The batch iterator of one process over one split.

    Args:
        config: the data config (directory, buckets, duration filter, mixture, threads).
        tokenizer: a loaded `Tokenizer` or its HF directory.
        split: ``train``, ``validation`` or ``test`` (a directory under ``config.dir``).
        process_index, process_count: this process and how many read the split together; each takes a
            disjoint, contiguous slice of ``rows_per_process`` rows of every global batch.
        seed: the experiment seed (``config.shuffle_seed_offset`` is added).
        rows_per_process: rows of each local batch (the global batch is ``rows_per_process * process_count``).
        train: shuffled epochs with the source mixture, endless unless ``num_epochs``, packed rows when
            ``config.packing``; False: record order, one pass, one clip per row, last batch of each bucket
            padded with masked rows. Default: ``split == "train"``.
        num_epochs: stop after this many epochs (None: endless when training, 1 otherwise).
        n_window: the audio encoder's ``n_window`` (sets the audio token count per clip).

    Returns:
        A `BatchIterator` yielding batch dicts (interface 1).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
    if rows_per_process < 1:
        raise ValueError(f"rows_per_process must be >= 1, got {rows_per_process}")
    train = split == "train" if train is None else train
    if not train and num_epochs is None:
        num_epochs = 1
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    shards = split_shards(config.dir, split)
    index = read_index(config.dir, split, shards)
    bucket_frames = [b[0] for b in config.buckets]
    global_batch = rows_per_process * process_count
    data_seed = seed + config.shuffle_seed_offset

    packing = train and config.packing
    if packing:
        if index.texts is None:
            # Converted before index.npz recorded transcripts: read them from the records, once per run.
            print(
                f"{Path(config.dir) / split}/index.npz holds no transcripts (converted by an older sawt); "
                "reading every record for them (re-run `sawt data convert` to avoid this)",
                file=sys.stderr,
                flush=True,
            )
            index = scan_index(shards)
        frames, tokens = config.buckets[-1]
        capacity = RowCapacity.of_bucket(frames, tokens, config.max_clips_per_row, n_window)
        lengths = row_tokens(
            index,
            tok,
            config.prompt_style(),
            n_window,
            language_field=config.language_field,
            context_field=config.context_field,
        )
        costs = ClipCosts.of(index.num_frames(), lengths, n_window)

    def plan(epoch: int) -> batching.EpochPlan:
        common = dict(
            seed=data_seed,
            epoch=epoch,
            min_duration=config.min_duration,
            max_duration=config.max_duration,
        )
        if packing:
            return batching.packed_epoch_plan(
                index,
                costs,
                capacity,
                len(config.buckets) - 1,
                global_batch,
                source_weights=config.source_weights,
                **common,
            )
        batches = batching.epoch_plan(
            index,
            bucket_frames,
            global_batch,
            shuffle=train,
            source_weights=config.source_weights if train else None,
            **common,
        )
        return batching.EpochPlan(batches, {})

    source = grain.sources.ArrayRecordDataSource([str(p) for p in shards])
    if len(source) != len(index):
        raise DataError(f"{Path(config.dir) / split}: index.npz has {len(index)} rows, shards {len(source)}")
    featurise = Featuriser(
        source,
        tok,
        config.buckets,
        config.prompt_style(),
        n_window,
        language_field=config.language_field,
        context_field=config.context_field,
    )
    read_options = grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_batches
    )
    return BatchIterator(plan, featurise, process_index, process_count, read_options, num_epochs)
