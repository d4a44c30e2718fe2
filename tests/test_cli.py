import argparse
import io

import pytest

from utils.cli import add_bool, make_parser, optional_str, str2bool


@pytest.mark.parametrize("v,expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                        ("True", True), ("1", True), ("yes", True), ("ON", True),
                                        ("T", True), ("f", False)])  # upstream's strtobool took t/f
def test_str2bool(v, expected):
    assert str2bool(v) is expected


def test_str2bool_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("Flase")


def test_bool_flag_forms():
    p = make_parser("t")
    add_bool(p, "use_8bit", True, "x")
    assert p.parse_args(["--use_8bit=False"]).use_8bit is False
    assert p.parse_args(["--use_8bit", "false"]).use_8bit is False
    assert p.parse_args(["--use_8bit"]).use_8bit is True
    assert p.parse_args([]).use_8bit is True
    with pytest.raises(SystemExit):
        p.parse_args(["--use_8bit=maybe"])


def test_optional_str():
    assert optional_str("None") is None and optional_str("chinese") == "chinese"


def test_false_means_not_set_for_every_flag_that_may_be_unset():
    """``--output=False`` wrote evaluation.py's report to a file named "False", ``--output_dir=False`` made a folder
    of that name, ``--resume_from_checkpoint=False`` looked for one."""
    from utils.cli import optional_float, optional_path

    assert optional_str("False") is None and optional_path("false") is None and optional_float("FALSE") is None
    parsers = _parsers()
    assert parsers["evaluation"].parse_args(["--output=False"]).output is None
    assert parsers["finetune"].parse_args(["--resume_from_checkpoint=False"]).resume_from_checkpoint is None


def _parsers():
    """Every script's parser, by script name (the web UI builds its parser inside parse_args)."""
    import aishell
    import evaluation
    import finetune
    import infer
    import merge_lora
    import realtime_transcribe
    import sentiment_analysis

    parsers = {m.__name__: m.build_parser() for m in (aishell, evaluation, finetune, infer, merge_lora,
                                                       realtime_transcribe, sentiment_analysis)}
    return parsers


def _option(parser, flag):
    """The action of ``flag``; not an original Whisper-Finetune flag kept only to be ignored (add_upstream_flags)."""
    return next((a for a in parser._actions if flag in a.option_strings and not a.dest.startswith("upstream_")), None)


def test_one_flag_vocabulary_across_the_scripts():
    """A flag that appears in several scripts has one type, one set of values and one default meaning."""
    import streamlit_whisper

    parsers = _parsers()
    # a model is read through --model_path everywhere but the two seed flags of finetune / merge_lora
    for name in ("evaluation", "infer", "realtime_transcribe", "sentiment_analysis"):
        assert _option(parsers[name], "--model_path") is not None, name
    assert streamlit_whisper.parse_args(["--model_path=m"]).model_path == "m"
    to_simple = [(n, _option(p, "--to_simple")) for n, p in parsers.items() if _option(p, "--to_simple")]
    assert {n for n, _ in to_simple} == {"infer", "realtime_transcribe"}
    assert {(a.type, a.default) for _, a in to_simple} == {(to_simple[0][1].type, None)}  # auto everywhere
    backends = {n: _option(p, "--backend").choices for n, p in parsers.items() if _option(p, "--backend")}
    assert set(backends) == {"evaluation", "infer", "realtime_transcribe"}
    assert all(list(c)[:2] == ["transformers", "ct2"] for c in backends.values())
    assert {n: _option(p, "--backend").default for n, p in parsers.items() if _option(p, "--backend")} == {
        "evaluation": "auto", "infer": "auto", "realtime_transcribe": "ct2"}
    for name in ("evaluation", "finetune"):
        assert _option(parsers[name], "--min_audio_len") and _option(parsers[name], "--max_audio_len"), name
    assert set(_option(parsers["sentiment_analysis"], "--output_format").choices) <= {"txt", "json", "srt", "vtt"}


def test_number_flags_refuse_nan_and_inf_in_every_script(capsys):
    """--chunk_seconds=nan and --min_silence_seconds=inf passed the range checks (every comparison with nan is
    False) and failed after the model had loaded, with a traceback; a number flag now refuses them at once."""
    import infer_server

    from utils.cli import finite_float

    parsers = {**_parsers(), "infer_server": infer_server.build_parser()}
    floats = {(n, a.dest) for n, p in parsers.items() for a in p._actions if a.type is float}
    assert not floats  # every number flag is finite_float
    assert finite_float("1e-3") == 0.001
    for flag in ("--chunk_seconds=nan", "--min_silence_seconds=inf", "--min_silence_seconds=1e400"):
        with pytest.raises(SystemExit) as e:
            parsers["realtime_transcribe"].parse_args(["--audio_path=a.wav", flag])
        assert e.value.code == 2 and "finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parsers["finetune"].parse_args(["--learning_rate=nan"])
    assert "finite number" in capsys.readouterr().err


def test_old_spellings_still_work_and_are_hidden():
    parsers = _parsers()
    ev = parsers["evaluation"].parse_args(["--min_duration=1.5", "--max_duration=20"])
    assert (ev.min_audio_len, ev.max_audio_len) == (1.5, 20.0)
    assert parsers["evaluation"].parse_args([]).min_audio_len == 0.0  # the alias does not override the default
    st = parsers["sentiment_analysis"].parse_args(["--text=好", "--model=vader", "--output_format=text"])
    assert (st.model_path, st.output_format) == ("vader", "txt")
    for name, alias in (("evaluation", "--min_duration"), ("sentiment_analysis", "--model "),
                        ("evaluation", "--num_beams"), ("infer", "--num_beams")):
        assert alias not in parsers[name].format_help(), name
    assert parsers["infer"].parse_args(["--audio_path=a.wav", "--num_beams=4"]).num_beams == 4
    assert parsers["infer"].parse_args(["--audio_path=a.wav", "--output_format=text"]).output_format == ["txt"]


def test_help_states_each_default_once():
    """A flag whose help says its default is not followed by argparse's "(default: ...)" too (evaluation's
    --output read "(default: <model_path ...> in the cwd) (default: None)")."""
    for name, parser in _parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help and "default" in action.help.lower():
                assert formatter._get_help_string(action) == action.help, (name, action.dest)
        text = " ".join(parser.format_help().split())
        assert "in the cwd) (default" not in text, name


def test_output_paths_checked_by_several_processes_at_once_are_all_writable(tmp_path):
    # every rank of a torchrun launch checks --output_dir: one rank's probe folder is removed while another one
    # writes into it (a flaky "cannot write in the folder ... No such file or directory" before)
    import threading

    from utils.cli import output_path_problem

    problems = []
    for round_ in range(30):
        path = tmp_path / f"run{round_}" / "ddp"
        barrier = threading.Barrier(4)

        def check(path=path, barrier=barrier):
            barrier.wait()
            problems.append(output_path_problem(path, folder=True))

        threads = [threading.Thread(target=check) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert problems == [None] * 120, [p for p in problems if p][:3]


def test_bitsandbytes_optional_kernel_warning_is_shown_only_with_verbose(caplog):
    """bitsandbytes' warning about an optional 4-bit CPU kernel it could not fetch (every peft import on an
    AVX512-BF16 CPU) is a DEBUG record: hidden by default, shown with --verbose; its other warnings are untouched."""
    import logging

    from utils.cli import setup_logging

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    kernel = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ..."
    try:
        setup_logging(False)
        with caplog.at_level(logging.INFO):
            log.warning(kernel, "could not verify publisher trust status")
            log.warning("another bitsandbytes warning")
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "another bitsandbytes warning")]
        caplog.clear()
        setup_logging(True)
        with caplog.at_level(logging.DEBUG):
            log.warning(kernel, "offline")
        assert [r.levelname for r in caplog.records] == ["DEBUG"]
        assert "gemm_4bit_forward" in caplog.records[0].getMessage()
    finally:
        setup_logging(False)


def test_main_called_by_an_app_leaves_the_apps_logging_level_alone():
    """setup_logging kept an app's handlers but set the root logger to INFO: the app's own INFO records, hidden by
    its WARNING level, showed after its first call of a script's main()."""
    import logging

    from utils.cli import quiet_logging, setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    app = logging.StreamHandler(io.StringIO())
    try:
        root.handlers[:] = [app]
        root.setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.DEBUG)  # the app's choice for a third-party logger
        setup_logging(False)
        assert root.handlers == [app] and root.level == logging.WARNING
        assert logging.getLogger("httpx").level == logging.DEBUG
        assert not logging.getLogger("myapp").isEnabledFor(logging.INFO)
        assert logging.getLogger("utils.transcribe").isEnabledFor(logging.INFO)
        assert logging.getLogger("infer").isEnabledFor(logging.INFO)
        assert not logging.getLogger("utils.transcribe").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("__main__").isEnabledFor(logging.INFO)  # the app's script's own
        setup_logging(True)
        assert root.level == logging.WARNING and logging.getLogger("utils.streaming").isEnabledFor(logging.DEBUG)
        quiet_logging()  # finetune.py's other ranks: errors only, the toolkit's loggers too
        assert not logging.getLogger("utils.trainer").isEnabledFor(logging.WARNING)
        assert not logging.getLogger("finetune").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
        setup_logging(False)


def test_a_device_the_machine_cannot_use_is_a_parse_error_before_any_model_loads(monkeypatch, capsys):
    """--device=banana, or cuda/mps where the engine sees no such GPU, was a traceback from PyTorch or CTranslate2
    after the model started loading (or, with ct2, ran on the CPU without a word); now one parser error (exit 2)
    that says what the engine sees and the fix."""
    import ctranslate2
    import torch

    import evaluation
    import infer
    import realtime_transcribe
    from utils.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    for device in ("cpu", "auto"):
        assert check_device(device, "ct2") == check_device(device) == device
    for bad in ("banana", "gpu", "cuda:x", "CUDA"):
        with pytest.raises(ValueError, match="unknown device; use auto, cpu, cuda, cuda:N"):
            check_device(bad, "ct2")
    with pytest.raises(ValueError, match=r"sees 0 CUDA GPU\(s\) on this machine; use --device=cpu"):
        check_device("cuda", "ct2")
    with pytest.raises(ValueError, match=r"PyTorch .* sees 0 CUDA GPU\(s\)"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no Apple GPU"):
        check_device("mps")
    assert check_device("mps", "ct2") == "mps"  # CTranslate2 runs it on the CPU, with a warning
    for main, flags in ((infer.main, ["--audio_path=x.wav", "--backend=ct2", "--device=cuda"]),
                        (evaluation.main, ["--test_data=x.json", "--device=banana"]),
                        (realtime_transcribe.main, ["--audio_path=x.wav", "--device=cuda:0"])):
        with pytest.raises(SystemExit) as exit_info:
            main(flags)
        assert exit_info.value.code == 2 and "--device=" in capsys.readouterr().err


def test_seeds_and_encoder_windows_out_of_range_are_parse_errors(capsys):
    """evaluation.py --seed=-1 (or ≥ 2**32) and --encoder_window_seconds=31 were tracebacks after the model loaded."""
    import evaluation

    for flag in ("--seed=-1", f"--seed={2**32}", "--encoder_window_seconds=31", "--encoder_window_seconds=0"):
        with pytest.raises(SystemExit) as exit_info:
            evaluation.main(["--test_data=x.json", flag])
        assert exit_info.value.code == 2 and flag.split("=")[0] in capsys.readouterr().err
    args = evaluation.build_parser().parse_args(["--seed=4294967295", "--encoder_window_seconds=None"])
    assert args.seed == 2**32 - 1 and args.encoder_window_seconds is None


@pytest.mark.parametrize("script,flags,flag", [
    ("infer", ["--audio_path=x.wav", "--cpu_threads=-5"], "--cpu_threads"),
    ("infer", ["--audio_path=x.wav", "--compression_ratio_threshold=-1"], "--compression_ratio_threshold"),
    ("infer", ["--audio_path=x.wav", "--no_speech_threshold=2"], "--no_speech_threshold"),
    ("infer", ["--audio_path=x.wav", "--logprob_threshold=nan"], "--logprob_threshold"),
    ("realtime_transcribe", ["--audio_path=x.wav", "--min_silence_seconds=-1"], "--min_silence_seconds"),
    ("realtime_transcribe", ["--audio_path=x.wav", "--cpu_threads=-5"], "--cpu_threads"),
    ("realtime_transcribe", ["--audio_path=."], "is a folder: give one audio file"),
    ("evaluation", ["--test_data=x.json", "--min_audio_len=10", "--max_audio_len=5"], "no clip could be kept"),
])
def test_values_no_run_could_use_are_parse_errors(script, flags, flag, capsys):
    """Values the helper walkthrough found accepted: negative thread counts and silences, thresholds outside their
    range (a negative silence changed the live text), a folder for realtime's one file, --min_audio_len above the
    max (reported as "no usable lines left")."""
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(flags)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_prompt_flags_set_to_false_are_not_set_and_an_empty_model_path_is_refused(capsys):
    """--initial_prompt=False was decoded with the prompt "False"; --model_path= loaded the working folder."""
    import infer

    args = infer.build_parser().parse_args(["--audio_path=a.wav", "--initial_prompt=False", "--hotwords=none"])
    assert args.initial_prompt is None and args.hotwords is None
    with pytest.raises(SystemExit):
        infer.build_parser().parse_args(["--audio_path=a.wav", "--model_path="])
    assert "--model_path: an empty path" in capsys.readouterr().err
