"""`sawt transcribe` on a tiny converted checkpoint: formats, long audio, bad files, run directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from sawt.cli import main as sawt_main

SR = 16_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic HF thinker (tiny preset, fp32) with the demo tokenizer, converted with `sawt convert`."""
    from tools.data.synth import read_sentences, tokenizer_training_text, write_tokenizer
    from tools.dev.synthetic_hf import write_synthetic_hf
    from trainer.config import load_experiment

    root = tmp_path_factory.mktemp("transcribe")
    config = load_experiment("tiny", []).model
    hf = write_synthetic_hf(root / "hf", config, prefix="thinker.", dtype="fp32", scale=0.2)
    write_tokenizer(tokenizer_training_text([s.text for s in read_sentences()]), hf)
    assert sawt_main(["convert", "hf-to-orbax", "--hf", str(hf), "--out", str(root / "ckpt"), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def audio(tiny):
    """Files in each format (a >30 s one among them) plus bad ones."""
    rng = np.random.default_rng(0)
    d = tiny / "audio"
    d.mkdir()
    tone = np.sin(2 * np.pi * 220 * np.arange(SR * 3) / SR).astype(np.float32) * 0.3
    sf.write(d / "tone.wav", tone, SR)
    sf.write(d / "noise.flac", (0.1 * rng.standard_normal(int(22050 * 2.5))).astype(np.float32), 22050)
    sf.write(d / "speech.mp3", (0.1 * rng.standard_normal(SR * 2)).astype(np.float32), SR)
    sf.write(d / "long.wav", (0.1 * rng.standard_normal(SR * 41)).astype(np.float32), SR)
    sf.write(d / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(d / "absurd_rate.wav", tone[:800], 800)
    (d / "empty.wav").write_bytes(b"")
    (d / "garbage.mp3").write_bytes(b"definitely not audio" * 10)
    return d


def _run_json(capsys, *argv) -> tuple[int, list[dict], str]:
    rc = sawt_main(["transcribe", "--output", "json", *map(str, argv)])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


def test_json_output_formats_and_bad_files(tiny, audio, capsys):
    good = [audio / "tone.wav", audio / "noise.flac", audio / "speech.mp3"]
    bad = [audio / "silent.wav", audio / "absurd_rate.wav", audio / "empty.wav", audio / "garbage.mp3"]
    files = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]
    rc, rows, err = _run_json(capsys, "--checkpoint", tiny / "ckpt", "--max-new-tokens", "4", *files)
    assert rc == 1
    assert [r["file"] for r in rows] == [str(f) for f in good]
    for f in bad:
        assert f"error: {f}" in err
    assert "silent" in err and "sample rate 800 Hz" in err
    assert "4 of 7 files failed" in err

    from trainer.data.audio import num_frames
    from trainer.data.text import asr_prompt_ids, load_tokenizer
    from trainer.model.geometry import encoder_token_count

    tok = load_tokenizer(tiny / "ckpt")
    for row, seconds in zip(rows, (3.0, 2.5, 2.0), strict=True):
        assert set(row) == {
            "file",
            "text",
            "token_ids",
            "prompt_token_ids",
            "audio_seconds",
            "cut_windows",
            "windows",
        }
        assert row["audio_seconds"] == pytest.approx(seconds, abs=0.01)
        assert 0 < len(row["token_ids"]) <= 4
        assert row["text"] == tok.decode(row["token_ids"])
        n_audio = int(encoder_token_count(num_frames(round(seconds * SR))))
        assert row["prompt_token_ids"] == asr_prompt_ids(tok, n_audio)
        assert len(row["windows"]) == 1


def test_ids_match_direct_generation_from_hf_weights(tiny, audio, capsys):
    """The CLI's ids equal greedy decoding by a model loaded straight from the HF safetensors."""
    from flax import nnx

    from tools.hf.convert import read_hf_params
    from tools.transcribe import Transcriber
    from trainer.data.audio_io import decode_audio
    from trainer.model.generate import greedy_generate
    from trainer.model.params import load_param_tree
    from trainer.model.thinker import Thinker

    rc, rows, _ = _run_json(
        capsys, "--checkpoint", tiny / "ckpt", "--max-new-tokens", "4", audio / "tone.wav"
    )
    assert rc == 0
    config, params = read_hf_params(tiny / "hf")
    model = Thinker(config, rngs=nnx.Rngs(1))
    load_param_tree(model, params)
    transcriber = Transcriber.load(tiny / "ckpt")
    batch, prompts = transcriber.make_batch([decode_audio(audio / "tone.wav")])
    ids, counts = greedy_generate(model, batch, 4, stop_ids=transcriber.stop_ids)
    assert rows[0]["token_ids"] == [int(t) for t in np.asarray(ids)[0, : int(counts[0])]]
    assert rows[0]["prompt_token_ids"] == prompts[0]


def test_long_audio_is_windowed_and_stitched(tiny, audio, capsys):
    from trainer.data.longform import stitch, window_bounds

    rc, rows, _ = _run_json(
        capsys, "--checkpoint", tiny / "ckpt", "--max-new-tokens", "4", audio / "long.wav", audio / "tone.wav"
    )
    assert rc == 0
    long = rows[0]
    bounds = window_bounds(41 * SR)
    assert len(bounds) >= 2
    assert [(w["start_s"], w["end_s"]) for w in long["windows"]] == [(s / SR, e / SR) for s, e in bounds]
    assert long["audio_seconds"] == pytest.approx(41.0)
    assert long["token_ids"] == stitch([w["token_ids"] for w in long["windows"]])
    assert len(long["prompt_token_ids"]) == sum(w["prompt_tokens"] for w in long["windows"])
    # Shorter windows: more of them, and the whole file is still covered.
    rc, rows, _ = _run_json(
        capsys, "--checkpoint", tiny / "ckpt", "--max-new-tokens", "4", "--window-s", "10", audio / "long.wav"
    )
    assert rc == 0 and rows[0]["windows"][-1]["end_s"] == pytest.approx(41.0)
    assert len(rows[0]["windows"]) == len(window_bounds(41 * SR, 10.0))


def test_a_window_cut_at_the_length_cap_is_counted_and_reported(tiny, audio, capsys):
    """The duration-based budget, held under --max-length-cap: a window that reaches it without an end token
    is marked cut, counted in cut_windows and warned about on stderr."""
    rc, rows, err = _run_json(capsys, "--checkpoint", tiny / "ckpt", audio / "tone.wav")
    assert rc == 0
    budget = rows[0]["windows"][0]["max_new_tokens"]
    assert 3 < budget < 448  # from the clip's 3 s, not the cap
    rc, rows, err = _run_json(
        capsys, "--checkpoint", tiny / "ckpt", "--max-length-cap", "3", audio / "tone.wav"
    )
    assert rc == 0
    (window,) = rows[0]["windows"]
    assert window["max_new_tokens"] == 3 and len(window["token_ids"]) == 3
    assert window["cut"] is True and rows[0]["cut_windows"] == 1
    assert f"{audio / 'tone.wav'}: 1 of 1 windows reached their length budget" in err


def test_text_output_and_trainer_run_directory(tiny, audio, capsys):
    """A trainer run dir (steps without tokenizer files) resolves to its latest step; tokenizer from RUN/model/."""
    run = tiny / "run"
    for step in (10, 20):
        step_dir = run / "checkpoints" / str(step)
        step_dir.mkdir(parents=True)
        shutil.copytree(tiny / "ckpt" / "params", step_dir / "params")
        shutil.copy(tiny / "ckpt" / "model_config.json", step_dir)
    tok_dir = run / "model"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / "ckpt" / name, tok_dir)
    rc = sawt_main(["transcribe", "--checkpoint", str(run), "--max-new-tokens", "4", str(audio / "tone.wav")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == 1 and out[0].startswith(f"{audio / 'tone.wav'}\t")


def test_missing_checkpoint_is_a_usage_error(tmp_path, audio, capsys):
    rc = sawt_main(["transcribe", "--checkpoint", str(tmp_path / "nope"), str(audio / "tone.wav")])
    assert rc == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_language_and_prompt_change_the_prompt_token_ids(tiny, audio, capsys):
    """The contract: `sawt transcribe --output json --language ar --prompt TEXT` changes prompt_token_ids,
    to exactly the prompt `trainer.data.text` builds for training with that instruction and context."""
    from trainer.data.audio import num_frames
    from trainer.data.text import LANGUAGE_INSTRUCTIONS, asr_prompt_ids, load_tokenizer
    from trainer.model.geometry import encoder_token_count

    tok = load_tokenizer(tiny / "ckpt")
    n_audio = int(encoder_token_count(num_frames(3 * SR)))
    base = ["--checkpoint", tiny / "ckpt", "--max-new-tokens", "2"]
    seen = {}
    for flags, instruction, context in (
        ((), LANGUAGE_INSTRUCTIONS["ar"], None),
        (("--language", "en"), LANGUAGE_INSTRUCTIONS["en"], None),
        (("--language", "ar", "--prompt", "سلمى ويوسف"), LANGUAGE_INSTRUCTIONS["ar"], "سلمى ويوسف"),
    ):
        rc, rows, _ = _run_json(capsys, *base, *flags, audio / "tone.wav")
        assert rc == 0
        assert rows[0]["prompt_token_ids"] == asr_prompt_ids(tok, n_audio, instruction, context)
        seen[flags] = tuple(rows[0]["prompt_token_ids"])
    assert len(set(seen.values())) == 3
    rc, _, err = _run_json(capsys, *base, "--language", "fr", audio / "tone.wav")
    assert rc == 2 and "unsupported language 'fr'; supported: ar, ar-en, en" in err
