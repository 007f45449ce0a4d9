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
from trainer.model.geometry import encoder_token_count

STATUS_OK = "ok"
STATUS_PAD = "pad"


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
    with np.load(path, allow_pickle=False) as npz:
        index = SplitIndex(
            duration=np.asarray(npz["duration"], np.float32),
            source_id=np.asarray(npz["source_id"], np.int32),
            sources=tuple(str(s) for s in npz["sources"]),
        )
        names = [str(s) for s in npz["shards"]] if "shards" in npz.files else None
    if names is not None and names != [p.name for p in shards]:
        raise DataError(f"{path}: lists shards {names} but the directory holds {[p.name for p in shards]}")
    return index


def scan_index(shards: Sequence[Path]) -> SplitIndex:
    """Builds the index by reading every record's metadata (slow for big splits; the converter's index.npz
    avoids it). Undecodable records get duration 0, so the duration filter leaves them out."""
    from array_record.python.array_record_module import ArrayRecordReader

    from trainer.data.example import BadRecord, peek_speech_meta

    durations: list[float] = []
    names: list[str] = []
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        try:
            for payload in reader.read_all():
                try:
                    meta = peek_speech_meta(payload)
                    durations.append(meta.audio_len / meta.sample_rate)
                    names.append(meta.dataset_name)
                except BadRecord:
                    durations.append(0.0)
                    names.append("")
        finally:
            reader.close()
    sources = sorted(set(names))
    ids = {n: i for i, n in enumerate(sources)}
    return SplitIndex(
        duration=np.asarray(durations, np.float32),
        source_id=np.asarray([ids[n] for n in names], np.int32),
        sources=tuple(sources),
    )


# ------------------------------------------------------------------------------------------ featurise


def empty_batch(rows: int, audio_frames: int, text_tokens: int) -> dict[str, Any]:
    """A batch of ``rows`` padding rows in a bucket's shape (interface 1)."""
    return {
        "input_ids": np.full((rows, text_tokens), PAD_ID, np.int32),
        "targets": np.full((rows, text_tokens), PAD_ID, np.int32),
        "loss_mask": np.zeros((rows, text_tokens), np.float32),
        "token_mask": np.zeros((rows, text_tokens), bool),
        "positions": np.zeros((rows, text_tokens), np.int32),
        "audio_mel": np.zeros((rows, NUM_MEL_BINS, audio_frames), np.float32),
        "audio_frames": np.zeros(rows, np.int32),
        "audio_tokens": np.zeros(rows, np.int32),
        "audio_offset": np.zeros(rows, np.int32),
        "meta": {
            "sample_id": [""] * rows,
            "dataset_name": [""] * rows,
            "text": [""] * rows,
            "duration": [0.0] * rows,
            "status": [STATUS_PAD] * rows,
        },
    }


def batch_shapes(config: DataConfig, rows: int) -> list[dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """Shape and dtype of every array of a batch, per bucket (for ahead-of-time compilation)."""
    out = []
    for frames, tokens in config.buckets:
        batch = empty_batch(rows, frames, tokens)
        out.append({k: (v.shape, v.dtype) for k, v in batch.items() if k != "meta"})
    return out


class Featuriser:
    """Turns one planned batch (bucket, record indices) into a batch dict; safe to call from many threads."""

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
        max_context_tokens: int = 224,
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
        batch = empty_batch(rows.size, frames_cap, tokens_cap)
        meta = batch["meta"]
        wanted = [(b, int(r)) for b, r in enumerate(rows) if r != PAD_ROW]
        payloads = self._read([r for _, r in wanted])
        records = {}
        for (b, _), payload in zip(wanted, payloads, strict=True):
            try:
                records[b] = decode_speech(payload, optional_text=self._optional)
            except BadRecord as err:
                meta["status"][b] = f"bad_record:{err.reason}"
        order = sorted(records)
        transcripts = self.tok.encode_batch([records[b].text for b in order])
        for b, transcript in zip(order, transcripts, strict=True):
            rec = records[b]
            meta["sample_id"][b] = rec.sample_id
            meta["dataset_name"][b] = rec.dataset_name
            meta["text"][b] = rec.text
            meta["duration"][b] = float(rec.audio.size) / rec.sample_rate
            frames = rec.audio.size // HOP
            if frames > frames_cap:  # the index's duration disagreed with the record
                meta["status"][b] = "audio_too_long"
                continue
            if self._audio_ids.intersection(transcript):
                # The Rust tokenizer turns "<|audio_pad|>" in text into the control token; a row with one
                # would break the placeholder count the model relies on.
                meta["status"][b] = "special_token_in_text"
                continue
            n_tokens = encoder_token_count(frames, self.n_window)
            try:
                instruction, context = self._prompt_of(rec)
            except PromptError:
                meta["status"][b] = "bad_prompt"
                continue
            row = training_row(self.tok, n_tokens, transcript, instruction, context)
            n = row.input_ids.size
            if n > tokens_cap:
                meta["status"][b] = "text_too_long"
                continue
            batch["audio_mel"][b, :, :frames] = log_mel(rec.audio)
            batch["audio_frames"][b] = frames
            batch["audio_tokens"][b] = n_tokens
            batch["audio_offset"][b] = row.audio_offset
            batch["input_ids"][b, :n] = row.input_ids
            batch["targets"][b, :n] = row.targets
            batch["loss_mask"][b, :n] = row.loss_mask
            batch["token_mask"][b, :n] = True
            batch["positions"][b, :n] = np.arange(n, dtype=np.int32)
            meta["status"][b] = STATUS_OK
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
        skipped: running count of rows left out of the consumed batches, by reason (not part of the state).
        epoch: the epoch the next batch comes from.
    """

    def __init__(
        self,
        plan: Callable[[int], list[batching.PlannedBatch]],
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
        if not planned:
            raise DataError("the split has no records left after the duration filter and bucketing")
        items = [
            (p.bucket, batching.process_rows(p.rows, self._process_index, self._process_count))
            for p in planned
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
        train: shuffled epochs with the source mixture, endless unless ``num_epochs``; False: record order, one
            pass, last batch of each bucket padded with masked rows. Default: ``split == "train"``.
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

    def plan(epoch: int) -> list[batching.PlannedBatch]:
        return batching.epoch_plan(
            index,
            bucket_frames,
            global_batch,
            seed=data_seed,
            epoch=epoch,
            shuffle=train,
            min_duration=config.min_duration,
            max_duration=config.max_duration,
            source_weights=config.source_weights if train else None,
        )

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
