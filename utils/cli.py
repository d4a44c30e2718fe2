"""Command-line helpers shared by every script: strict booleans, common flag groups, logging."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time

logger = logging.getLogger(__name__)

_TRUE = {"true", "t", "1", "yes", "y", "on"}  # t, f: what distutils' strtobool took (upstream's flags)
_FALSE = {"false", "f", "0", "no", "n", "off"}


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value strictly: ``--use_8bit=False`` is False.

    Accepts true/false, t/f, 1/0, yes/no, y/n, on/off (any case); anything else is an error.
    """
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got {value!r}")


def bool_or_auto(value: str | bool | None) -> bool | None:
    """true/false like :func:`str2bool`, or ``auto`` → None (the program decides)."""
    if value is None or isinstance(value, bool):
        return value
    return None if value.strip().lower() == "auto" else str2bool(value)


# what a flag that may be unset takes as "not set" (``--flag=False`` must mean no value: ``--output=False`` wrote the
# report to a file named "False", ``--initial_prompt=False`` was decoded with the prompt "False")
_UNSET = frozenset({"", "none", "null", "false"})


def optional_str(value: str) -> str | None:
    """A string flag where ``None``/``False``/empty means "not set" (e.g. ``--language=None``)."""
    return None if value.strip().lower() in _UNSET else value


def path_arg(value: str) -> str:
    """A file or folder flag: ``~`` expanded as the shell does for ``--flag ~/x`` but not for ``--flag=~/x`` (the
    README's form: ``--audio_path=~/a.wav`` looked for a folder named ``~``). An empty value is refused (an unset
    shell variable: ``aishell.py --target_dir=$DIR`` unpacked 15 GB into the working folder)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?): give a file or folder, or leave "
                                         "the flag out for its default")
    return os.path.expanduser(value)


def optional_path(value: str) -> str | None:
    """:func:`path_arg` where ``None``/``False``/empty means "not set"."""
    value = optional_str(value)
    return None if value is None else path_arg(value)


def optional_float(value: str) -> float | None:
    """A number flag where ``None``/``False``/empty means "not set"."""
    if value.strip().lower() in _UNSET:
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or None, got {value!r}") from None


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default in ``--help``, except where its help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def int_at_least(value: str, minimum: int, what: str = "a whole number") -> int:
    """An integer flag value of at least ``minimum``; ``what`` names the expected value in the error."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"expected {what} of at least {minimum}, got {number}")
    return number


def positive_int(value: str) -> int:
    """A count flag: a whole number of at least 1."""
    return int_at_least(value, 1)


def finite_float(value: str) -> float:
    """A number flag: nan and inf are refused here (they passed every range check and failed later, after the
    model had loaded, with a traceback)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def seed_int(value: str) -> int:
    """A random seed flag: 0 to 2**32 - 1, what every generator seeded from it (NumPy, CTranslate2) takes."""
    number = int_at_least(value, 0, "a seed")
    if number >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed below 2**32 ({2**32}), got {number}")
    return number


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser that shows defaults in ``--help``."""
    return argparse.ArgumentParser(description=description, formatter_class=_DefaultsHelpFormatter)


def add_upstream_flags(parser: argparse.ArgumentParser, notes: dict[str, str]) -> None:
    """Accept flags of the original Whisper-Finetune scripts that do nothing here (hidden from --help), so its
    command lines run; :func:`note_upstream_flags` says what became of each one given. ``notes``: flag → why."""
    for name in notes:
        parser.add_argument(f"--{name}", dest=f"upstream_{name}", default=None, help=argparse.SUPPRESS)


def note_upstream_flags(args: argparse.Namespace, notes: dict[str, str]) -> None:
    """Log, for each upstream flag of ``notes`` given, that it is accepted and what it means here."""
    for name, note in notes.items():
        value = getattr(args, f"upstream_{name}", None)
        if value is not None:
            logger.warning("--%s=%s (a flag of the original Whisper-Finetune): %s", name, value, note)


def add_bool(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: bool, help: str) -> None:
    """Add ``--name`` that takes an explicit value (``--name=False``) or, bare, means True."""
    parser.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, help=help)


def add_hidden_alias(parser: argparse.ArgumentParser, alias: str, flag: str) -> None:
    """Accept ``alias`` (an old spelling) for ``flag``: it sets the same value and is not shown in ``--help``."""
    action = next(a for a in parser._actions if flag in a.option_strings)
    parser.add_argument(alias, dest=action.dest, type=action.type, nargs=action.nargs, const=action.const,
                        choices=action.choices, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def output_format_arg(value: str) -> str:
    """``--output_format``'s value: ``text``, the old spelling, is ``txt`` (infer.py, sentiment_analysis.py)."""
    return "txt" if value == "text" else value


def add_to_simple_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--to_simple``: the same type, default and meaning in every script that prints text."""
    parser.add_argument("--to_simple", type=bool_or_auto, default=None, nargs="?", const=True,
                        help="traditional → simplified Chinese: true/false/auto (auto = on for Chinese output)")


def add_audio_length_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, min_default: float,
                          max_default: float = 30.0, max_help: str = "") -> None:
    """``--min_audio_len`` / ``--max_audio_len``: the clips of a manifest that are used (finetune, evaluation);
    ``max_help``: what the script says of longer clips."""
    parser.add_argument("--min_audio_len", type=finite_float, default=min_default,
                        help="leave out clips shorter than this (s)")
    parser.add_argument("--max_audio_len", type=finite_float, default=max_default,
                        help=f"leave out clips longer than this (s{max_help})")


def add_dataset_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, splits: dict[str, str],
                     streaming: bool = False) -> None:
    """Flags for data given as a Hugging Face dataset instead of a manifest (utils/hf_data.py): one split flag per
    entry of ``splits`` (``{"train_split": "train"}``), the hub config, the column names and, for a script that
    reads its data once in order, ``--streaming``."""
    for name, default in splits.items():
        parser.add_argument(f"--{name}", type=str, default=default,
                            help="the split of a dataset folder or hub dataset to use (a one-split source: ignored)")
    parser.add_argument("--dataset_config", type=optional_str, default=None,
                        help="hub dataset configuration, e.g. zh-CN for Common Voice")
    parser.add_argument("--audio_column", type=optional_str, default=None,
                        help="dataset column holding the audio (default: its Audio column, or 'audio')")
    parser.add_argument("--text_column", type=optional_str, default=None,
                        help="dataset column holding the transcript (default: the first of sentence, text, "
                             "transcription, transcript, normalized_text)")
    if streaming:
        add_bool(parser, "streaming", False, "stream a hub or parquet dataset instead of downloading it whole")


def add_backend_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str = "transformers",
                    help: str | None = None) -> None:
    """``--backend``: transformers or ct2 (or ``auto`` where ``default`` is auto: :func:`resolve_backend`)."""
    from utils.transcribe import BACKENDS

    choices = [*BACKENDS, "auto"] if default == "auto" else list(BACKENDS)
    parser.add_argument("--backend", type=str, default=default, choices=choices,
                        help=help or "transformers, or ct2 for a CTranslate2 folder (merge_lora --ct2, the importer)"
                        + ("; auto (the default): ct2 where --model_path is a CTranslate2 folder, else transformers"
                           if default == "auto" else ""))


def resolve_backend(backend: str, model_paths: list[str]) -> str:
    """``--backend=auto`` resolved: ct2 when every model named is a local CTranslate2 folder (``model.bin``),
    transformers otherwise (hub ids, transformers folders, packaged names); an explicit backend is kept."""
    if backend != "auto":
        return backend
    from utils.models import model_folder_kind

    chosen = "ct2" if model_paths and all(model_folder_kind(p) == "ct2" for p in model_paths) else "transformers"
    logger.info("--backend=auto: %s (%s)", chosen, ", ".join(model_paths))
    return chosen


def add_model_args(parser: argparse.ArgumentParser, *, default_model: str = "openai/whisper-base") -> None:
    """Flags naming and loading a Whisper model (shared by infer, evaluation, realtime, UI)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_path", type=path_arg, default=default_model,
                   help="merged model folder, hub id (openai/whisper-*), or offline-packaged model")
    add_bool(g, "local_files_only", False, "never contact the model hub")
    g.add_argument("--device", type=str, default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps")


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Language/task flags shared by every decoding script."""
    g = parser.add_argument_group("decoding")
    g.add_argument("--language", type=optional_str, default=None,
                   help="language name or code (chinese/zh); None = the language the model was fine-tuned on, "
                        "else detected; auto = always detected")
    g.add_argument("--task", type=optional_str, default=None, choices=[None, "transcribe", "translate"],
                   help="transcribe, or translate (to English); default: the task the model was fine-tuned for "
                        "(finetune.py --task), else transcribe")
    g.add_argument("--initial_prompt", type=optional_str, default=None,
                   help="text given to the decoder as previous context (vocabulary, style)")
    g.add_argument("--hotwords", type=optional_str, default=None,
                   help='words to steer towards, e.g. "张三,Kubernetes": put before the previous text in the prompt')


def add_engine_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                    default_backend: str = "auto", ct2_encoder_auto: str | None = None) -> None:
    """Inference-engine flags shared by infer, evaluation and the server: --backend, --dtype, --compute_type,
    --ct2_encoder (``ct2_encoder_auto``: what its auto means in this script, for the help)."""
    from utils.transcribe import DTYPES

    add_backend_arg(parser, default=default_backend)
    parser.add_argument("--dtype", type=str, default="auto", choices=DTYPES,
                        help="transformers: auto = fp16 on GPU, fp32 on CPU; bfloat16 = bf16 autocast on CPU")
    parser.add_argument("--compute_type", type=str, default="auto",
                        help="ct2: auto = int8 on CPU, float16 on GPU; or float32, int8_float16, ...")
    if ct2_encoder_auto is None:
        add_ct2_encoder_arg(parser)
    else:
        add_ct2_encoder_arg(parser, auto=ct2_encoder_auto)


def encoder_window_flag(value: str) -> str | float | None:
    """--encoder_window_seconds: auto, None, or seconds (1 to Whisper's 30)."""
    if value.strip().lower() == "auto":
        return "auto"
    seconds = optional_float(value)
    if seconds is not None and not 1 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"expected auto, None or 1 to 30 seconds, got {value}")
    return seconds


# --encoder_window_seconds=auto on a CPU (evaluation.py, realtime_transcribe.py): at least 15 s, the longest clip or
# buffer + 5 s rounded up to 5 s. Evaluation decodes the demo test set in half the time, real and espeak English
# score as in 30 s (10 s: one more wrong word in each); streaming keeps up
# (README "评估模型", "实时转录", "速度")
CPU_ENCODER_WINDOW_S = 15.0


def add_encoder_window_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                           cpu_window_s: float = CPU_ENCODER_WINDOW_S) -> None:
    """--encoder_window_seconds (DecodeOptions.encoder_window_s), resolved by :func:`resolve_encoder_window` with
    the same ``cpu_window_s`` (seconds, what auto means on a CPU)."""
    parser.add_argument("--encoder_window_seconds", type=encoder_window_flag, default="auto",
                        help="encode a batch in a window of at least this many s (its longest clip + 5 s, rounded "
                             "up to 5 s) instead of Whisper's 30 s: the encoder costs ~3x less; auto = "
                             f"{cpu_window_s:g} on a CPU, None (30 s) on a GPU; None = always 30 s")


def resolve_encoder_window(value: str | float | None, device: str,
                           cpu_window_s: float = CPU_ENCODER_WINDOW_S) -> float | None:
    """--encoder_window_seconds for an engine on ``device`` ("cpu", "cuda", …): auto = ``cpu_window_s`` on a CPU
    (where the 30 s window is most of a short clip's time), None (30 s) elsewhere."""
    if value != "auto":
        return value  # type: ignore[return-value]
    return cpu_window_s if device == "cpu" else None


def add_ct2_encoder_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                        auto: str = "torch with AMX (for 5 min of audio or more, not with --compute_type=float32), "
                                    "onnx with VNNI (AVX-512-VNNI/AVX-VNNI), else ct2") -> None:
    """--ct2_encoder: who runs the audio encoder under the ct2 backend; ``auto``: what auto means, for the help."""
    from utils.transcribe import CT2_ENCODERS

    parser.add_argument("--ct2_encoder", type=str, default="auto", choices=CT2_ENCODERS,
                        help="ct2 backend: run the audio encoder in PyTorch bfloat16 (torch; ~3x faster on CPUs "
                             "with AMX), in onnxruntime (onnx; int8 for an int8 --compute_type, CTranslate2's scheme, "
                             f"~2x faster per 30 s window on CPUs with VNNI; else float32) or in CTranslate2 (ct2); "
                             f"auto = {auto}")


_PROBE_ATTEMPTS = 20  # tries to write the probe file while other processes make and remove the same folders


def output_path_problem(path: str | os.PathLike, *, folder: bool) -> str | None:
    """Why ``path`` cannot be written, or None. ``folder``: ``path`` is a folder to write into; otherwise a
    file (its folder may not exist yet). Checked by making the missing folders and removing them again, so a
    run that fails later leaves no empty folder, and a write that would fail fails before any slow work. Safe when
    several processes check one path at once (every rank of a torchrun launch): a folder that vanishes between
    making it and writing into it is made again.
    """
    path = os.path.abspath(os.fspath(path))
    if folder and os.path.isfile(path):
        return "is a file; give a folder path"
    if not folder and os.path.isdir(path):
        return "is a folder; give a file path"
    parent = path if folder else os.path.dirname(path)
    missing: set[str] = set()  # folders this check may make (and removes again)

    def note_missing() -> str:
        probe = parent
        while not os.path.exists(probe):
            missing.add(probe)
            probe = os.path.dirname(probe)
        return probe

    existing = note_missing()
    if os.path.isfile(existing):  # one stat: a folder another process removes meanwhile is not taken for a file
        return f"{existing} is a file, so no folder can be made there"
    try:
        for attempt in range(_PROBE_ATTEMPTS):
            try:
                note_missing()
                os.makedirs(parent, exist_ok=True)
                fd, probe_file = tempfile.mkstemp(prefix=".write-test-", dir=parent)
                break
            except (FileNotFoundError, FileExistsError):  # another process checking the same path (torchrun's
                # ranks) removed the folder between our making it and writing into it (or while makedirs checked)
                if attempt == _PROBE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        os.close(fd)
        os.unlink(probe_file)
    except OSError as e:
        return f"cannot write in the folder {parent} ({e.strerror})"
    finally:
        for made in sorted(missing, key=len, reverse=True):  # deepest first
            try:
                os.rmdir(made)
            except OSError:
                pass
    if not folder and os.path.exists(path) and not os.access(path, os.W_OK):
        return "exists and is read-only"
    return None


def check_output_path(parser: argparse.ArgumentParser, flag: str, path: str | os.PathLike | None, *,
                      folder: bool) -> None:
    """``parser.error`` naming ``flag`` when ``path`` (if given) cannot be written (``output_path_problem``)."""
    if path:
        problem = output_path_problem(path, folder=folder)
        if problem is not None:
            parser.error(f"{flag} {path}: {problem}")


class _DemoteWarning(logging.Filter):
    """A third-party warning that tells our users nothing they can act on, logged at DEBUG instead (shown with
    ``--verbose``): records of the filtered logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith(self.prefix):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# bitsandbytes (imported by peft) on a CPU with AVX512-BF16 asks the hub for an optional 4-bit kernel, which the hub's
# trust check refuses (and offline it cannot reach): a warning at every finetune.py / merge_lora.py start, while
# bitsandbytes runs its own code for it, and we never run 4-bit layers on a CPU
_DEMOTED = {"bitsandbytes.backends.cpu.ops": _DemoteWarning("Failed to load CPU gemm_4bit_forward")}


class _ProgressAwareHandler(logging.StreamHandler):
    """Writes log lines through ``tqdm.write``: a line logged while a progress bar is drawn goes above the bar on a
    line of its own (a plain handler appends it to the bar's line, where an ERROR is easy to miss)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own contract: a failing handler reports through handleError, never raises
            self.handleError(record)


def _tolerant_output() -> None:
    """stdout/stderr that cannot encode every character (a Windows pipe in cp1252, LC_ALL=C without UTF-8 mode)
    write what they cannot as escapes instead of stopping the program: ``infer.py > out.txt`` there raised
    UnicodeEncodeError at the first Chinese transcript, before its output files were written."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding not in ("utf8", "utf16", "utf32") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream already closed or not reconfigurable
                pass


# the toolkit's own loggers: the scripts' (by module name, or __main__) and the packages'
_OWN_LOGGERS = ("__main__", "utils", "tools", "aishell", "evaluation", "finetune", "gpu_check", "infer",
                "infer_server", "merge_lora", "realtime_transcribe", "sentiment_analysis", "streamlit_whisper")


def setup_logging(verbose: bool = False) -> None:
    """Configure logging for a script's ``main()``: a handler on the root logger at the level of ``verbose`` or the
    ``LOG_LEVEL`` environment variable (INFO by default). Where the root logger has handlers already (an app that
    calls ``main()``, pytest's capture), they and its level are the app's: only the toolkit's own loggers get the
    level (an app's own INFO records stayed hidden until it called ``main()``, and showed after). The third-party
    warnings of ``_DEMOTED`` become DEBUG records.
    """
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("LOG_LEVEL", "INFO").upper(), logging.INFO)
    _tolerant_output()
    root = logging.getLogger()
    mine = not root.handlers or any(isinstance(h, _ProgressAwareHandler) for h in root.handlers)
    if not root.handlers:
        handler = _ProgressAwareHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    if mine:
        root.setLevel(level)
    for name in _OWN_LOGGERS:  # under the toolkit's own handler they follow the root logger
        if mine or name != "__main__":  # an app's script is __main__ itself
            logging.getLogger(name).setLevel(logging.NOTSET if mine else level)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "numba") if mine else ():  # an app's: its own
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    for name, demote in _DEMOTED.items():
        if demote not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(demote)


def quiet_logging(level: int = logging.ERROR) -> None:
    """Show only records of ``level`` and above, the toolkit's own too (a multi-process run's other ranks: warnings
    once, from the main process)."""
    logging.getLogger().setLevel(level)
    for name in _OWN_LOGGERS:
        if logging.getLogger(name).level != logging.NOTSET:  # set by setup_logging under an app's handlers
            logging.getLogger(name).setLevel(level)


def check_device_arg(parser: argparse.ArgumentParser, device: str, backend: str) -> None:
    """``parser.error`` with :func:`utils.device.check_device`'s message where ``--device`` cannot run ``backend``
    here (an unknown name, a GPU the engine does not see), before any model loads."""
    from utils.device import check_device

    try:
        check_device(device, backend)
    except ValueError as e:
        parser.error(str(e))


# infer.py's and infer_server.py's --beam_size by default with --backend=ct2. Measured (tools/bench_infer.py
# --whole_process=True --repeats=3, whisper-base int8, 2-core EPYC, AVX2 profile; README "速度"), beam 1 / 2 / 3 / 5
# on 104.6 s of English: WER
# 0.041 / 0.031 / 0.027 / 0.031 in 0.89 / 0.91 / 0.90 / 1.01x the time of faster-whisper's batched pipeline (its
# beam 5: WER 0.034); one Mandarin sentence said 8 times (fine-tuned demo model), beam 1 / 3: CER 0.418 / 0.380
# (faster-whisper 0.380) in 0.77 / 0.92x its time. With transformers, beam 3 took 38.2 s instead of 17.4 s on the
# English file.
CT2_BEAM_SIZE = 3


def default_beam_size(backend: str) -> int:
    """--beam_size when not given: ``CT2_BEAM_SIZE`` with ct2, greedy with transformers."""
    return CT2_BEAM_SIZE if backend == "ct2" else 1
