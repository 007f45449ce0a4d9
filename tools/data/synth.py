"""`sawt data synth`: a small, real Arabic speech corpus made offline with espeak-ng.

The bundled sentences (tools/data/corpus/ar_sentences.txt, written for this project: three hand-written genres and
three composed from a closed vocabulary by tools/data/corpus/compose.py) are spoken by ``espeak-ng -v ar`` with
varied voice variants, speeds, pitch and gain, resampled to 16 kHz float32 and written as TFRecord shards in the
seed schema under ``OUT/{train,validation,test}/``. The genre becomes the clip's ``dataset_name``
(``espeak_daily``, ``espeak_news``, ``espeak_facts``, ``espeak_errands``, ``espeak_weather``,
``espeak_timetable``), so per-source statistics mean something.

Held out: the test split uses its own *sentences* (never spoken in train or validation), and two voice variants
that only test uses. Validation has its own sentences too, so validation WER measures generalisation. Every word
of a held-out sentence is heard in train (`split_sentences`), so the test measures recognising new sentences
rather than spelling unheard words.

``OUT/tokenizer/`` gets a byte-level BPE tokenizer trained on the train and validation text, with Qwen3-Omni's
special tokens first at ids 0..9 and a ChatML chat template (interface 3). Everything is a function of
``--seed`` and ``--n``: the same arguments give byte-identical shards.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from trainer.data.text import DEFAULT_INSTRUCTION, SPECIAL_TOKENS, chatml_template

SENTENCES_FILE = Path(__file__).parent / "corpus" / "ar_sentences.txt"
SPLITS = ("train", "validation", "test")
# Fractions of the sentences (per genre) held out for validation and test; the rest is train.
HELD_OUT_FRACTION = {"validation": 0.08, "test": 0.12}
# Fractions of the clips per split. Train sentences are each spoken several times (different voices).
CLIP_FRACTION = {"train": 0.8, "validation": 0.08, "test": 0.12}
# espeak-ng voice variants (espeak-ng-data/voices/!v). The last two are heard only in test.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3")
TEST_ONLY_VARIANTS = ("m6", "f5")
SPEED_WPM = (120, 175)  # espeak -s: words per minute
PITCH = (25, 75)  # espeak -p: 0..99
GAIN = (0.35, 0.95)  # peak amplitude after normalisation
NOISE_DBFS = (-70.0, -45.0)  # faint white noise, so silence is not digital zero
# Clips longer than this are spoken again, faster, so the corpus stays in short length buckets.
MAX_SECONDS = 6.0
MAX_SPEED_WPM = 300
CLIPS_PER_SHARD = 256
TRAIN_ONLY_MARK = "(train only)"
TOKENIZER_VOCAB = 1024
ESPEAK_RATE = 22_050


class SynthError(RuntimeError):
    """espeak-ng is missing or failed; the message names the sentence and the command."""


@dataclass(frozen=True)
class Sentence:
    text: str
    genre: str
    index: int  # line order in the sentences file, a stable id
    train_only: bool = False  # from a "# genre: NAME (train only)" section: never held out


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip, drawn up front so results do not depend on thread timing."""

    split: str
    sample_id: str
    sentence: Sentence
    variant: str
    speed_wpm: int
    pitch: int
    gain: float
    noise_dbfs: float
    noise_seed: int


def read_sentences(path: Path = SENTENCES_FILE) -> list[Sentence]:
    """Parses the sentences file: ``# genre: NAME [(train only)]`` headers, comments and blank lines skipped."""
    sentences: list[Sentence] = []
    genre = None
    train_only = False
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("# genre:"):
            genre = line.split(":", 1)[1].strip()
            train_only = genre.endswith(TRAIN_ONLY_MARK)
            genre = genre.removesuffix(TRAIN_ONLY_MARK).strip()
            continue
        if not line or line.startswith("#"):
            continue
        if genre is None:
            raise ValueError(f"{path}:{lineno}: sentence before any '# genre: NAME' header")
        sentences.append(Sentence(line, genre, len(sentences), train_only))
    return sentences


def _words(text: str) -> list[str]:
    from trainer.asr_metrics import normalize_arabic

    return normalize_arabic(text).split()


def split_sentences(sentences: list[Sentence], seed: int) -> dict[str, list[Sentence]]:
    """Assigns each sentence to one split, per genre: held-out sentences, every word of them heard in train.

    A sentence is held out (test first, then validation) only if every word in it, as WER counts words,
    still occurs in some train sentence after it leaves: the test measures recognising new sentences, not
    spelling words never heard (which no demo-sized model can learn). Genres marked ``(train only)`` (the
    hand-written ones, whose words are mostly heard once) are never held out.
    """
    rng = np.random.default_rng([seed, 1])
    out: dict[str, list[Sentence]] = {s: [] for s in SPLITS}
    words = {s.index: Counter(_words(s.text)) for s in sentences}
    in_train: Counter[str] = Counter()
    for counts in words.values():
        in_train.update(counts)
    for genre in sorted({s.genre for s in sentences}):
        group = [s for s in sentences if s.genre == genre]
        if group[0].train_only:
            out["train"] += group
            continue
        quota = {
            split: max(1, round(HELD_OUT_FRACTION[split] * len(group))) for split in ("test", "validation")
        }
        for i in rng.permutation(len(group)):
            sentence = group[i]
            mine = words[sentence.index]
            split = next((s for s in ("test", "validation") if quota[s]), "train")
            if split != "train" and all(in_train[w] > n for w, n in mine.items()):
                in_train.subtract(mine)
                quota[split] -= 1
            else:
                split = "train"
            out[split].append(sentence)
    return out


def plan_clips(n: int, seed: int, sentences: list[Sentence] | None = None) -> list[ClipSpec]:
    """Draws the ``n`` clips: split, sentence, voice variant, speed, pitch, gain and noise for each."""
    if n < len(SPLITS):
        raise ValueError(f"--n must be at least {len(SPLITS)} (one clip per split), got {n}")
    by_split = split_sentences(sentences or read_sentences(), seed)
    counts = {s: max(1, round(CLIP_FRACTION[s] * n)) for s in ("validation", "test")}
    counts["train"] = n - counts["validation"] - counts["test"]
    rng = np.random.default_rng([seed, 2])
    specs: list[ClipSpec] = []
    for split in SPLITS:
        pool = by_split[split]
        variants = TRAIN_VARIANTS + (TEST_ONLY_VARIANTS if split == "test" else ())
        order: list[int] = []
        for i in range(counts[split]):
            if not order:  # a fresh permutation each pass: every sentence once before any repeats
                order = list(rng.permutation(len(pool)))
            sentence = pool[order.pop()]
            specs.append(
                ClipSpec(
                    split=split,
                    sample_id=f"synth{seed}-{split}-{i:05d}",
                    sentence=sentence,
                    variant=str(variants[rng.integers(len(variants))]),
                    speed_wpm=int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
                    pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
                    gain=float(rng.uniform(*GAIN)),
                    noise_dbfs=float(rng.uniform(*NOISE_DBFS)),
                    noise_seed=int(rng.integers(2**31)),
                )
            )
    return specs


def espeak_command(spec: ClipSpec) -> list[str]:
    return [
        "espeak-ng",
        "-v",
        f"ar+{spec.variant}",
        "-s",
        str(spec.speed_wpm),
        "-p",
        str(spec.pitch),
        "--stdout",
        spec.sentence.text,
    ]


def speak(spec: ClipSpec) -> np.ndarray:
    """Runs espeak-ng for one clip; returns float32 mono at 16 kHz with the clip's gain and noise applied."""
    from trainer.data.audio_io import SAMPLE_RATE

    wave = _espeak(spec)
    seconds = wave.size / SAMPLE_RATE
    if seconds > MAX_SECONDS:
        faster = min(MAX_SPEED_WPM, int(np.ceil(spec.speed_wpm * seconds / (0.95 * MAX_SECONDS))))
        wave = _espeak(replace(spec, speed_wpm=faster))
    peak = float(np.max(np.abs(wave))) or 1.0
    wave = wave * np.float32(spec.gain / peak)
    noise = np.random.default_rng(spec.noise_seed).standard_normal(wave.size).astype(np.float32)
    wave += noise * np.float32(10.0 ** (spec.noise_dbfs / 20.0))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _espeak(spec: ClipSpec) -> np.ndarray:
    import soundfile as sf

    from trainer.data.audio_io import SAMPLE_RATE, resample

    cmd = espeak_command(spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng, or `make setup`)") from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip()
        raise SynthError(
            f"espeak-ng failed (exit {proc.returncode}) on sentence {spec.sentence.index}: {err}"
        )
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return resample(data[:, 0], int(rate), SAMPLE_RATE)


def tokenizer_training_text(texts: list[str], instruction: str = DEFAULT_INSTRUCTION) -> list[str]:
    """The corpus text plus the chat scaffolding, so role names and the instruction become whole tokens."""
    scaffolding = ["user\n", "assistant\n", "system\n", instruction] * 20
    return [*texts, *scaffolding]


def write_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = TOKENIZER_VOCAB) -> None:
    """Trains a byte-level BPE on ``texts`` and writes an HF tokenizer directory (interface 3).

    Files: ``tokenizer.json``, ``tokenizer_config.json`` (ChatML ``chat_template``; eos ``<|im_end|>``, pad
    ``<|endoftext|>``) and ``special_tokens_map.json``. Special tokens take ids 0..9 in `SPECIAL_TOKENS` order.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from core.fileio import atomic_write_json, atomic_write_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "tokenizer.json", tokenizer.to_str(pretty=True))
    special_map = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "chat_template": chatml_template(),
        **special_map,
    }
    atomic_write_json(out_dir / "tokenizer_config.json", config)
    atomic_write_json(out_dir / "special_tokens_map.json", special_map)


def _write_split(out: Path, split: str, specs: list[ClipSpec], waves: list[np.ndarray]) -> list[str]:
    from trainer.data.example import encode_speech
    from trainer.data.tfrecord import TFRecordWriter

    num_shards = max(1, -(-len(specs) // CLIPS_PER_SHARD))
    paths = []
    for shard in range(num_shards):
        path = out / split / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with TFRecordWriter(path) as writer:
            for spec, wave in list(zip(specs, waves, strict=True))[shard::num_shards]:
                writer.write(
                    encode_speech(wave, spec.sentence.text, f"espeak_{spec.sentence.genre}", spec.sample_id)
                )
        paths.append(str(path))
    return paths


def synthesise(out: Path, n: int, seed: int, workers: int | None = None, log=print) -> dict:
    """Makes the corpus under ``out``; returns the summary also written to ``out/synth.json``.

    Raises:
        SynthError: espeak-ng missing or failing.
        FileExistsError: ``out`` already holds shards (remove it first: nothing is overwritten silently).
    """
    from core.fileio import atomic_write_json
    from core.progress import progress

    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng, or `make setup`)")
    existing = [p for s in SPLITS for p in (out / s).glob("*.tfrecord")]
    if existing:
        raise FileExistsError(f"{out}: already holds {len(existing)} TFRecord shards; choose a new --out")
    sentences = read_sentences()
    specs = plan_clips(n, seed, sentences)
    workers = workers or os.cpu_count() or 1
    log(f"synth: {n} clips from {len(sentences)} sentences with {workers} espeak-ng workers -> {out}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        waves = list(progress(pool.map(speak, specs), total=len(specs), desc="espeak-ng", unit="clip"))
    summary: dict = {"n": n, "seed": seed, "splits": {}, "sentences_file": SENTENCES_FILE.name}
    for split in SPLITS:
        chosen = [(s, w) for s, w in zip(specs, waves, strict=True) if s.split == split]
        split_specs = [s for s, _ in chosen]
        split_waves = [w for _, w in chosen]
        shards = _write_split(out, split, split_specs, split_waves)
        seconds = [w.size / 16000 for w in split_waves]
        summary["splits"][split] = {
            "clips": len(chosen),
            "sentences": len({s.sentence.index for s in split_specs}),
            "hours": round(sum(seconds) / 3600, 4),
            "min_duration": round(min(seconds), 3),
            "max_duration": round(max(seconds), 3),
            "shards": [Path(p).name for p in shards],
            "sources": sorted({f"espeak_{s.sentence.genre}" for s in split_specs}),
        }
        log(
            f"  {split:<10} {len(chosen):5d} clips  {sum(seconds) / 60:6.1f} min  "
            f"{min(seconds):.2f}-{max(seconds):.2f} s  {len(shards)} shard(s)"
        )
    by_split = split_sentences(sentences, seed)
    seen_text = [s.text for split in ("train", "validation") for s in by_split[split]]
    write_tokenizer(tokenizer_training_text(seen_text), out / "tokenizer")
    log(f"  tokenizer  -> {out / 'tokenizer'}")
    summary["clips"] = [
        {k: v for k, v in asdict(s).items() if k != "sentence"} | {"sentence": s.sentence.index}
        for s in specs
    ]
    atomic_write_json(out / "synth.json", summary)
    return summary


def main(args: argparse.Namespace) -> int:
    """Entry point of `sawt data synth` (and of tools/demo.py)."""
    from core.errors import UsageError

    if args.n < len(SPLITS):
        raise UsageError(f"--n must be at least {len(SPLITS)}, got {args.n}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    try:
        synthesise(Path(args.out), args.n, args.seed, args.workers)
    except FileExistsError as err:
        raise UsageError(str(err)) from None
    return 0
