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
    ("--prompt_prob=1.5", "--prompt_prob must be in [0, 1]"),
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
    assert finetune.main(["--base_model=does/not/exist", "--train_data=dataset/demo/train.json",
                          "--test_data=dataset/demo/test.json", f"--output_dir={tmp_path / 'out'}"]) == 1
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
    reason = "is a file; give a folder path" if kind == "file" else "cannot write in the folder"
    assert f"--output_dir {target}: {reason}" in err and "Traceback" not in err
    if kind == "file":
        assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------------------------
# Every script on bad input: exit non-zero, one message naming the file or flag, no traceback, inputs unchanged,
# nothing new on disk (no partial file, no empty folder).


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_whisper_dir, en_wav):
    """A folder of bad inputs: a corrupt LoRA checkpoint, malformed manifests, non-audio, a file where a folder
    belongs, a damaged archive."""
    import json
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from utils.trainer import STATE_FILE, TrainerState

    d = tmp_path_factory.mktemp("bad-inputs")
    shutil.copy(en_wav, d / "good.wav")
    (d / "not_audio.wav").write_text("this is text, not audio")
    (d / "a_file").write_text("keep me")
    good = json.dumps({"audio": {"path": "good.wav"}, "sentence": "hello", "duration": 1.0})
    (d / "malformed.json").write_text(good + "\n{not json\n", encoding="utf-8")
    (d / "no_sentence.json").write_text(json.dumps({"audio": {"path": "good.wav"}, "duration": 1.0}) + "\n")
    (d / "good.json").write_text(good + "\n", encoding="utf-8")
    (d / "not_a_tgz.tgz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ckpt = d / "checkpoint-2"
    peft_model.save_pretrained(ckpt)
    TrainerState(global_step=2, max_steps=4).save(ckpt / STATE_FILE)
    torch.save({"state": {}}, ckpt / "optimizer.pt")
    weights = ckpt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short

    broken_opt = d / "checkpoint-4"
    shutil.copytree(ckpt, broken_opt)
    peft_model.save_pretrained(broken_opt)  # a complete adapter this time
    opt = broken_opt / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-64])
    return d


def _snapshot(root):
    """{relative path: sha256 (files) or 'dir'} of everything under ``root``."""
    import hashlib

    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


# (case id, script module, arguments with {d} = the bad-inputs folder, text the error must hold)
SCRIPT_CASES = [
    ("infer-missing-audio", "infer", ["--audio_path={d}/nope.wav", "--model_path=openai/whisper-base"],
     "--audio_path: 1 of 1 file(s) not found: {d}/nope.wav"),
    ("infer-not-audio", "infer", ["--audio_path={d}/not_audio.wav", "--model_path=openai/whisper-base",
                                  "--backend=ct2"], "{d}/not_audio.wav: cannot decode"),
    ("infer-output-dir-is-file", "infer", ["--audio_path={d}/good.wav", "--output_dir={d}/a_file"],
     "--output_dir {d}/a_file: is a file"),
    ("infer-bad-beam", "infer", ["--audio_path={d}/good.wav", "--beam_size=0"], "beam_size must be >= 1"),
    ("evaluation-malformed", "evaluation", ["--test_data={d}/malformed.json", "--output={d}/new/r.json"],
     "{d}/malformed.json:2"),
    ("evaluation-missing-field", "evaluation", ["--test_data={d}/no_sentence.json", "--output={d}/new/r.json"],
     "{d}/no_sentence.json:1"),
    ("evaluation-output-under-file", "evaluation", ["--test_data={d}/good.json", "--output={d}/a_file/r.json"],
     "--output {d}/a_file/r.json: {d}/a_file is a file"),
    ("evaluation-bad-limit", "evaluation", ["--test_data={d}/good.json", "--limit=-3", "--output={d}/new/r.json"],
     "--limit: expected a whole number of at least 1, got -3"),
    ("infer-several-files-after-equals", "infer", ["--audio_path={d}/good.wav", "{d}/good.wav"],
     "several files go after one --audio_path separated by spaces"),
    ("evaluation-missing-model", "evaluation", ["--test_data={d}/good.json", "--model_path={d}/no-model",
                                                "--output={d}/new/r.json"], "{d}/no-model"),
    ("realtime-missing-audio", "realtime_transcribe", ["--audio_path={d}/nope.wav"], "{d}/nope.wav: audio file not found"),
    ("realtime-not-audio", "realtime_transcribe", ["--audio_path={d}/not_audio.wav"], "{d}/not_audio.wav: cannot decode"),
    ("realtime-report-under-file", "realtime_transcribe", ["--audio_path={d}/good.wav",
                                                           "--report_path={d}/a_file/report.json"],
     "--report_path {d}/a_file/report.json: {d}/a_file is a file"),
    ("realtime-bad-chunk", "realtime_transcribe", ["--audio_path={d}/good.wav", "--chunk_seconds=-1"],
     "--chunk_seconds must be > 0"),
    ("finetune-malformed", "finetune", ["--train_data={d}/malformed.json", "--test_data={d}/good.json",
                                        "--base_model=openai/whisper-tiny.en", "--output_dir={d}/out"],
     "{d}/malformed.json:2"),
    ("finetune-missing-manifest", "finetune", ["--train_data={d}/nope.json", "--output_dir={d}/out"],
     "--train_data {d}/nope.json: manifest file not found"),
    ("finetune-corrupt-adapter", "finetune", ["--train_data={d}/good.json", "--test_data={d}/good.json",
                                              "--resume_from_checkpoint={d}/checkpoint-2", "--output_dir={d}/out",
                                              "--base_model=openai/whisper-tiny.en"],
     "{d}/checkpoint-2/adapter_model.safetensors: damaged or truncated"),
    ("finetune-corrupt-optimizer", "finetune", ["--train_data={d}/good.json", "--test_data={d}/good.json",
                                                "--resume_from_checkpoint={d}/checkpoint-4", "--output_dir={d}/out",
                                                "--base_model=openai/whisper-tiny.en"],
     "{d}/checkpoint-4/optimizer.pt: damaged or truncated"),
    ("finetune-resume-missing-folder", "finetune", ["--train_data={d}/good.json", "--test_data={d}/good.json",
                                                    "--resume_from_checkpoint={d}/checkpoint-9", "--output_dir={d}/out",
                                                    "--base_model=openai/whisper-tiny.en"],
     "cannot resume: {d}/checkpoint-9: no such folder"),
    ("finetune-negative-lr", "finetune", ["--learning_rate=-1", "--output_dir={d}/out"],
     "--learning_rate must be > 0"),
    ("merge-corrupt-adapter", "merge_lora", ["--lora_model={d}/checkpoint-2", "--output_dir={d}/models"],
     "{d}/checkpoint-2/adapter_model.safetensors: damaged or truncated"),
    ("merge-not-a-checkpoint", "merge_lora", ["--lora_model={d}", "--output_dir={d}/models"],
     "{d}: no adapter_config.json"),
    ("merge-missing-checkpoint-best", "merge_lora", ["--lora_model={d}/checkpoint-best", "--output_dir={d}/models"],
     "{d}/checkpoint-best: no such folder (there: checkpoint-2, checkpoint-4)"),
    ("merge-output-is-file", "merge_lora", ["--lora_model={d}/checkpoint-4", "--output_dir={d}/a_file"],
     "--output_dir {d}/a_file: is a file"),
    ("aishell-not-an-archive", "aishell", ["--filepath={d}/not_a_tgz.tgz", "--target_dir={d}/aishell/audio",
                                           "--annotation_text={d}/aishell", "--num_workers=1"],
     "{d}/not_a_tgz.tgz: corrupt or truncated archive"),
    ("aishell-missing-archive", "aishell", ["--filepath={d}/nope.tgz", "--target_dir={d}/aishell/audio",
                                            "--annotation_text={d}/aishell"], "{d}/nope.tgz: archive not found"),
    ("aishell-target-is-file", "aishell", ["--filepath={d}/not_a_tgz.tgz", "--target_dir={d}/a_file"],
     "--target_dir {d}/a_file: is a file"),
    ("sentiment-missing-input", "sentiment_analysis", ["--input={d}/nope.txt"], "{d}/nope.txt: no such file"),
    ("sentiment-wrong-kind", "sentiment_analysis", ["--input={d}/good.wav"], "{d}/good.wav: unknown extension"),
    ("sentiment-missing-model", "sentiment_analysis", ["--text=很好", "--model_path={d}/no-model"],
     "{d}/no-model: cannot load a text-classification model"),
    ("sentiment-output-under-file", "sentiment_analysis", ["--text=很好", "--output={d}/a_file/out.json"],
     "--output {d}/a_file/out.json: {d}/a_file is a file"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, script, args, message", SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_every_script_refuses_bad_input_cleanly(case, script, args, message, bad_inputs, capsys, caplog,
                                                monkeypatch):
    import importlib
    import logging

    d = bad_inputs
    monkeypatch.chdir(d)  # a default output path (evaluation's report, infer's output/) lands here if written
    before = _snapshot(d)
    module = importlib.import_module(script)
    argv = [a.format(d=d) for a in args]
    with caplog.at_level(logging.INFO):
        try:
            code = module.main(argv)
        except SystemExit as e:
            code = e.code
    err = capsys.readouterr().err + caplog.text
    assert code not in (0, None), f"{case}: exit code {code}"
    assert "Traceback" not in err, err
    assert message.format(d=d) in err, err
    assert _snapshot(d) == before, f"{case}: files changed or left behind"


def _good_and_broken(tmp_path, en_wav, name: str, data: bytes):
    """A two-line manifest: a good clip, then ``name`` holding ``data``."""
    import json
    import shutil

    shutil.copy(en_wav, tmp_path / "good.wav")
    (tmp_path / name).write_bytes(data)
    lines = [{"audio": {"path": "good.wav"}, "sentence": "hello", "duration": 1.0},
             {"audio": {"path": name}, "sentence": "hello", "duration": 1.0}]
    manifest = tmp_path / "train.json"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return manifest


@pytest.mark.parametrize("num_workers", [0, 1])
def test_audio_that_breaks_during_training_names_the_manifest_line(num_workers, tiny_whisper_dir, en_wav, tmp_path,
                                                                   caplog, capsys, monkeypatch):
    """A clip that exists but cannot be decoded fails when the DataLoader (a worker process or the main one)
    reads it: one message with the manifest file and line, not a worker traceback, and no checkpoint offered to
    resume from where none was saved. (An .m4a past the load-time check's ffprobe budget, here none; a broken .wav
    within it is refused before training, see below.)"""
    import utils.data

    monkeypatch.setattr(utils.data, "MAX_PROBES", 0)
    manifest = _good_and_broken(tmp_path, en_wav, "broken.m4a", b"\x00\x00\x00\x18ftypM4A junk" + bytes(4000))
    code = finetune.main([f"--base_model={tiny_whisper_dir}", f"--output_dir={tmp_path / 'out'}",
                          f"--train_data={manifest}", f"--test_data={manifest}", "--language=English",
                          "--per_device_train_batch_size=2", "--max_steps=2", f"--num_workers={num_workers}"])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{manifest}:2: {tmp_path / 'broken.m4a'}: cannot decode"), errors
    assert "Traceback" not in errors[0] and "Traceback" not in capsys.readouterr().err
    assert errors[0].endswith("fix or remove that line") and "resume" not in errors[0]


def test_a_broken_wav_is_refused_before_training(tiny_whisper_dir, en_wav, tmp_path, caplog):
    """A .wav whose header libsndfile cannot read (not audio, or cut off) passed the load-time header check (read
    like an m4a, whose header is not) and failed once training had started: hours in on a real dataset."""
    manifest = _good_and_broken(tmp_path, en_wav, "broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(4000))
    code = finetune.main([f"--base_model={tiny_whisper_dir}", f"--output_dir={tmp_path / 'out'}",
                          f"--train_data={manifest}", f"--test_data={manifest}", "--language=English"])
    assert code == 1
    assert f"{manifest}:2: {tmp_path / 'broken.wav'}: not readable as audio (" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing written: no run folder, no event log


def test_audio_longer_than_its_duration_says_is_refused_with_the_line(tiny_whisper_dir, en_wav, tmp_path, caplog,
                                                                      monkeypatch):
    """A clip whose 'duration' says 5 s but whose audio is 35 s passes the duration bounds; Whisper would hear its
    first 30 s and learn the whole text for them. Training stops with the manifest line and the fix. A clip whose
    length differs less (2 s of audio, 'duration' 1 s) is trained on, with a warning naming its line."""
    import json
    import shutil

    import numpy as np
    import soundfile as sf

    import utils.train_data

    # the warnings a process logs are limited: earlier tests in this process may have spent them
    monkeypatch.setattr(utils.train_data, "_MISMATCHES", utils.train_data._WarningBudget(5, "mismatches"))
    shutil.copy(en_wav, tmp_path / "good.wav")
    speech, rate = sf.read(en_wav, dtype="float32")
    sf.write(tmp_path / "long.wav", np.tile(speech, int(35 * rate / len(speech)) + 1)[: 35 * rate], rate)
    good = {"audio": {"path": "good.wav"}, "sentence": "hello", "duration": sf.info(en_wav).duration}
    short_said = {"audio": {"path": "good.wav"}, "sentence": "hello", "duration": 0.5}
    for name, second, code, message in (
            ("long", {"audio": {"path": "long.wav"}, "sentence": "hello", "duration": 5.0}, 1,
             "train.json:2: " + str(tmp_path / "long.wav") + ": the clip is 35.00 s ('duration' says 5.00 s)"),
            ("mismatch", short_said, 0, "train.json:2: " + str(tmp_path / "good.wav") + ": 'duration' says 0.50 s")):
        d = tmp_path / name
        d.mkdir()
        manifest = d / "train.json"
        lines = [{**good, "audio": {"path": str(tmp_path / "good.wav")}},
                 {**second, "audio": {"path": str(tmp_path / second["audio"]["path"])}}]
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        caplog.clear()
        assert finetune.main([f"--base_model={tiny_whisper_dir}", f"--output_dir={d / 'out'}",
                              f"--train_data={manifest}", f"--test_data={manifest}", "--language=English",
                              "--per_device_train_batch_size=2", "--max_steps=1", "--eval_steps=0",
                              "--num_workers=0", "--pack_audio=False"]) == code
        assert message in caplog.text, caplog.text
        if name == "long":  # found from the header when the manifest loads, before the model
            assert "window training can hold; cut it (audio.start_time/end_time)" in caplog.text
        else:  # from the header when the manifest loads; not again each time the clip is read (it was, every time)
            assert "train.json:2: the audio is" not in caplog.text
