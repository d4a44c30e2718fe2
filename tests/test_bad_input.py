"""Bad input costs no work: finetune.py rejects out-of-range flags at parse time with a message naming the
flag and its range, before any model or data is loaded, and writes nothing."""

from __future__ import annotations

import pytest

import finetune

# flag value → what the message must say. --base_model names a model that does not exist: if a check ran after
# model resolution, the error would be about the model instead.
BAD_FLAGS = [
    ("--learning_rate=-1", "--learning_rate must be > 0"),
    ("--learning_rate=0", "--learning_rate must be > 0"),
    ("--warmup_steps=-5", "--warmup_steps must be >= 0"),
    ("--lora_dropout=1.5", "--lora_dropout must be in [0, 1)"),
    ("--lora_r=0", "--lora_r must be >= 1"),
    ("--max_grad_norm=-1", "--max_grad_norm must be >= 0"),
    ("--generation_max_length=1000", "--generation_max_length must be in [0, 444]"),
    ("--per_device_train_batch_size=0", "--per_device_train_batch_size must be >= 1"),
    ("--save_total_limit=-1", "--save_total_limit must be >= 0"),
    ("--min_audio_len=40", "--max_audio_len must be in (0, 30]"),
    ("--min_audio_len=20", "--min_audio_len (20.0) must be below --max_audio_len (15.0)"),
]


@pytest.mark.parametrize("flag, message", BAD_FLAGS)
def test_finetune_rejects_out_of_range_flags_before_loading_anything(flag, message, tmp_path, capsys):
    out = tmp_path / "out"
    extra = ["--max_audio_len=15"] if "below" in message else []
    if "max_audio_len must" in message:
        extra = ["--max_audio_len=40"]
    with pytest.raises(SystemExit) as exc:
        finetune.main(["--base_model=does/not/exist", f"--output_dir={out}", flag, *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_finetune_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        finetune.main(["--base_model=does/not/exist", f"--output_dir={target}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--output_dir {target} is a file" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


def test_a_missing_base_model_points_to_the_flag_finetune_has(tmp_path, caplog):
    assert finetune.main(["--base_model=does/not/exist", f"--output_dir={tmp_path / 'out'}"]) == 1
    assert "--base_model in finetune.py" in caplog.text
    assert not (tmp_path / "out").exists()


def test_silent_audio_says_no_speech_instead_of_language_none(tmp_path, caplog):
    import numpy as np
    import soundfile as sf

    import infer

    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(16000 * 40, np.float32), 16000)  # long audio: the VAD finds no speech to detect from
    with caplog.at_level("INFO"):
        assert infer.main([f"--audio_path={wav}", "--model_path=openai/whisper-base", "--backend=ct2"]) == 0
    assert "no speech found" in caplog.text and "language None" not in caplog.text, caplog.text


def test_running_out_of_gpu_memory_is_a_clear_message_with_the_fix(tmp_path, caplog, monkeypatch):
    """torch.cuda.OutOfMemoryError (raised here by a stand-in training loop; a real one needs a GPU) ends the run
    with one message that says what to change, not a traceback."""
    import torch

    import utils.trainer
    from tests.conftest import make_speech

    wav = make_speech("hello there", tmp_path / "a.wav")
    manifest = tmp_path / "m.json"
    manifest.write_text('{"audio": {"path": "a.wav"}, "sentence": "hello there", "duration": 1.0}\n', encoding="utf-8")
    assert wav.is_file()

    def out_of_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(utils.trainer.Trainer, "train", out_of_memory)
    assert finetune.main(["--base_model=openai/whisper-tiny.en", f"--output_dir={tmp_path / 'out'}",
                          f"--train_data={manifest}", f"--test_data={manifest}", "--language=English",
                          "--per_device_train_batch_size=16", "--max_steps=2", "--num_workers=0"]) == 1
    assert "out of GPU memory at --per_device_train_batch_size=16" in caplog.text
    assert "--gradient_checkpointing=True" in caplog.text


def test_evaluation_on_a_malformed_manifest_is_one_line_naming_the_line(tmp_path, en_wav, caplog, capsys):
    import json

    import evaluation

    manifest = tmp_path / "bad.json"
    good = json.dumps({"audio": {"path": str(en_wav)}, "sentence": "hi", "duration": 1.0})
    manifest.write_text(good + "\n{not json\n", encoding="utf-8")
    before = manifest.read_bytes()
    assert evaluation.main([f"--test_data={manifest}", "--model_path=does/not/exist",
                            f"--output={tmp_path / 'r.json'}"]) == 1
    assert f"{manifest}:2" in caplog.text and "Traceback" not in capsys.readouterr().err
    assert manifest.read_bytes() == before and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("kind", ["file", "proc"])
def test_infer_output_dir_that_cannot_be_a_folder_fails_before_the_model_loads(kind, tmp_path, en_wav, capsys):
    import infer

    target = tmp_path / "a_file" if kind == "file" else "/proc/not-a-folder"
    if kind == "file":
        target.write_text("keep me")
    with pytest.raises(SystemExit) as exc:  # the model does not exist: a later check would complain about it
        infer.main([f"--audio_path={en_wav}", "--model_path=does/not/exist", f"--output_dir={target}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--output_dir {target}: cannot create this folder" in err and "Traceback" not in err
    if kind == "file":
        assert target.read_text() == "keep me"
