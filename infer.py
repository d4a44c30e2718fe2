"""Transcribe audio files with a Whisper model (transformers or CTranslate2 backend).

    python infer.py --audio_path=dataset/test.wav --model_path=models/whisper-tiny-finetune
    python infer.py --audio_path=recordings/ --backend=ct2 --model_path=models/whisper-ct2 \
        --timestamps --output_format=srt --output_dir=subs

Audio longer than 30 s is cut at silences (silero-vad) and decoded in batches; ``--condition_on_previous_text``
decodes the pieces one after another, each prompted with the text before it. The transcript goes to stdout;
``--output_format``/``--output_dir`` write files. Many files or a folder are processed in one call; a file that
fails is reported and skipped, and the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from utils.audio import AUDIO_EXTENSIONS, AudioLoadError, total_seconds
from utils.cli import (CT2_BEAM_SIZE, add_bool, add_decoding_args, add_engine_args, add_model_args, add_to_simple_arg,
                       add_upstream_flags, bool_or_auto, check_device_arg, check_output_path, default_beam_size,
                       finite_float, make_parser, note_upstream_flags, optional_path, output_format_arg, path_arg,
                       resolve_backend, setup_logging, str2bool)
from utils.device import cpu_has_amx
from utils.languages import has_unspaced_script
from utils.models import ModelResolutionError, cache_root
from utils.subtitles import CUE_FORMATS, OUTPUT_FORMATS, CueLayout, format_timestamp, write_transcript
from utils.transcribe import (DEFAULT_TEMPERATURES, TORCH_ENCODER_MIN_AUDIO_S, DecodeOptions, Transcriber, Transcript,
                              load_transcriber, resolve_task, task_flag)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--audio_path", type=path_arg, nargs="+", required=True,
                        help="audio file(s) and/or folder(s) (searched recursively for audio files)")
    add_model_args(parser)
    add_decoding_args(parser)
    g = parser.add_argument_group("engine")
    add_engine_args(g)
    g.add_argument("--batch_size", type=int, default=8, help="30 s chunks decoded at once")
    g.add_argument("--cpu_threads", type=int, default=0,
                   help="ct2 CPU threads in all (0 = CTranslate2's default: 4, or the cores if fewer), split between "
                        "two workers that decode halves of a batch side by side")
    add_bool(g, "use_compile", False, "torch.compile the encoder (transformers, GPU)")
    g.add_argument("--attn_implementation", type=str, default="auto",
                   choices=["auto", "sdpa", "eager", "flash_attention_2"],
                   help="auto = flash-attention-2 on CUDA when installed, else SDPA")
    add_bool(g, "use_bettertransformer", False, "deprecated upstream; SDPA is used instead")
    add_upstream_flags(parser, UPSTREAM_FLAGS)
    d = parser.add_argument_group("decoding options")
    d.add_argument("--beam_size", type=int, default=None,
                   help=f"beam width (1 = greedy); default {CT2_BEAM_SIZE} with --backend=ct2 (beam search costs "
                        "little there and cuts errors), 1 with transformers (its beam search doubles the time on a "
                        "CPU)")
    d.add_argument("--num_beams", type=int, default=None, help=argparse.SUPPRESS)  # the old name of --beam_size
    d.add_argument("--timestamps", type=bool_or_auto, nargs="?", const=True, default=None,
                   help="segment-level timestamps: true/false/auto (auto, the default: on when --output_format "
                        "writes srt, vtt or json, whose cues and segments need them; off otherwise)")
    add_bool(d, "word_timestamps", False, "word-level timestamps (Chinese: per character) with probabilities, "
             "in the JSON output (cross-attention alignment)")
    add_bool(d, "subtitle_words", False, "SRT/VTT output with one cue per word (needs --word_timestamps)")
    add_bool(d, "condition_on_previous_text", False,
             "long audio: decode its pieces one after another, each prompted with the text before it (slower)")
    add_bool(d, "fallback", True, "temperature fallback on repetition / low log-probability, skip silence")
    d.add_argument("--compression_ratio_threshold", type=finite_float, default=2.4, help="repetition-loop threshold")
    d.add_argument("--logprob_threshold", type=finite_float, default=-1.0, help="average log-probability threshold")
    d.add_argument("--no_speech_threshold", type=finite_float, default=0.6, help="no-speech probability threshold")
    add_to_simple_arg(d)
    add_bool(d, "remove_pun", False, "remove punctuation from the output")
    o = parser.add_argument_group("output")
    o.add_argument("--output_format", type=output_format_arg, default=None, choices=[*OUTPUT_FORMATS, "all"],
                   action="append", help="write files of this format into --output_dir (default txt when "
                                         "--output_dir is given); give it again for more formats, or 'all'")
    o.add_argument("--output_dir", type=optional_path, default=None, help="folder for output files (default: output)")
    o.add_argument("--max_line_width", type=int, default=42,
                   help="SRT/VTT: columns a cue's line holds (a Chinese character takes two); a longer segment is "
                        "cut into several cues; 0 = a cue per segment on one line")
    o.add_argument("--max_line_count", type=int, default=2, help="SRT/VTT: lines a cue holds (0 = no limit)")
    add_bool(o, "verbose", False, "debug logging")
    return parser


def lone_decoder_record() -> Path:
    """Where infer.py keeps, per machine and model layout, whether a window alone decodes faster on every thread
    (``CT2Transcriber.tune_lone_decoder``): in the toolkit's cache folder."""
    return cache_root() / "lone_decoder.json"


def collect_audio_files(paths: list[str]) -> list[str]:
    """Expand folders into their audio files (sorted, recursive; hidden files and folders, such as macOS's ``._*``
    copies, left out; a link to a missing file kept, to fail and be counted) and a glob pattern the shell did not
    expand (quoted, or typed in Windows cmd: ``'data/*.wav'`` was "not found") into the files it matches (sorted;
    ``**`` recursive); files are kept as given, even missing ones, and each once (a file named twice, by another path
    too, is transcribed once)."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*")
                           if f.suffix.lower() in AUDIO_EXTENSIONS and (f.is_file() or f.is_symlink())
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                logger.warning("%s: no audio files (%s) in this folder", p, ", ".join(AUDIO_EXTENSIONS))
            others = sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and f.suffix.lower()
                            not in AUDIO_EXTENSIONS and not any(x.startswith(".") for x in f.relative_to(p).parts))
            if others:  # named so that a recording in a format missing from the list is not skipped unnoticed
                logger.info("%s: %d file(s) skipped by name (not %s): %s%s", p, len(others),
                            "/".join(AUDIO_EXTENSIONS), ", ".join(others[:5]), " …" if len(others) > 5 else "")
            files += found
        elif not os.path.exists(p) and glob.has_magic(p):  # a pattern the shell left alone: quoted, or Windows cmd
            matched = sorted(f for f in glob.glob(os.path.expanduser(p), recursive=True)
                             if os.path.isfile(f) and Path(f).suffix.lower() in AUDIO_EXTENSIONS)
            if not matched:
                logger.warning("%s: no file matches this pattern", p)
            files += matched
        else:
            files.append(p)
    first: dict[str, str] = {}
    for f in files:  # each file as first named
        first.setdefault(os.path.realpath(f), f)
    kept = list(first.values())
    if len(kept) < len(files):  # the same file named twice (a folder and a file in it): it was decoded twice,
        # its outputs written as name and name_1
        logger.info("%d file(s) named more than once: each transcribed once", len(files) - len(kept))
    return kept


def _unique_stems(files: list[str]) -> list[str]:
    """Output names for ``files``: each file's stem; a stem met again gets the first free ``_1``, ``_2``… (free of
    every other file's name too, compared without case as macOS and Windows file systems do)."""
    taken = {Path(f).stem.casefold() for f in files}
    stems, first = [], set()
    for f in files:
        stem = name = Path(f).stem
        if stem.casefold() in first:
            n = 1
            while f"{stem}_{n}".casefold() in taken:
                n += 1
            name = f"{stem}_{n}"
            taken.add(name.casefold())
        first.add(stem.casefold())
        stems.append(name)
    return stems


def format_stdout(transcript: Transcript, timestamps: bool) -> str:
    """The transcript as printed: plain text, or one ``[start --> end] text`` line per segment."""
    if not timestamps:
        return transcript.text
    return "\n".join(f"[{format_timestamp(s.start, '.')} --> {format_timestamp(s.end, '.')}] {s.text}"
                     for s in transcript.segments)




def beam_size(args: argparse.Namespace) -> int:
    """--beam_size (or the old --num_beams) resolved: the default depends on the backend (CT2_BEAM_SIZE)."""
    if args.num_beams is not None:
        return args.num_beams
    if args.beam_size is not None:
        return args.beam_size
    return default_beam_size(args.backend)


def options_from_args(args: argparse.Namespace) -> DecodeOptions:
    """Convert the parsed flags once, at the edge."""
    return DecodeOptions(
        language=args.language,
        task=args.task or "transcribe",  # without --task: the model's (resolve_task, once it has loaded)
        beam_size=beam_size(args),
        timestamps=args.timestamps,
        temperatures=DEFAULT_TEMPERATURES if args.fallback else (0.0,),
        compression_ratio_threshold=args.compression_ratio_threshold if args.fallback else None,
        logprob_threshold=args.logprob_threshold if args.fallback else None,
        no_speech_threshold=args.no_speech_threshold if args.fallback else None,
        batch_size=args.batch_size,
        condition_on_previous_text=args.condition_on_previous_text,
        to_simple=args.to_simple,
        remove_pun=args.remove_pun,
        initial_prompt=args.initial_prompt,
        hotwords=args.hotwords,
        word_timestamps=args.word_timestamps,
        decode_stats=bool({"json", "all"} & set(args.output_format or ())),  # the JSON file holds them
    )


PROGRESS_BAR_S = 120.0  # a file at least this long (seconds) shows a progress bar


def transcribe_one(engine: Transcriber, path: str, options: DecodeOptions, *, stream: bool) -> Transcript:
    """Transcribe one file with the engine's segment iterator: the detected language is logged before decoding,
    a long file shows a progress bar in seconds of audio, and with ``stream`` each ``[start --> end] text`` line
    is printed as soon as its segment is decoded."""
    segments, info = engine.transcribe_segments(path, options)
    fixed = engine.fixed_language(options)
    if fixed is None and info.chunks == 0:
        logger.info("%s: no speech found, so no language detected", path)
    elif fixed is None:
        logger.info("%s: detected language %s (probability %.2f)", path, info.language, info.language_probability)
    elif options.language is None:
        logger.info("%s: language %s, the one the model was fine-tuned on (--language=auto detects it)", path, fixed)
    collected = []
    with tqdm(total=round(info.duration), unit="s", desc=Path(path).name, leave=False,
              disable=info.duration < PROGRESS_BAR_S) as bar:  # not by chunks: 2 h with 6 of them showed none
        for segment in segments:
            collected.append(segment)
            bar.update(round(segment.end) - bar.n)
            if stream:
                print(f"[{format_timestamp(segment.start, '.')} --> {format_timestamp(segment.end, '.')}] "
                      f"{segment.text}", flush=True)
    return Transcript.collect(collected, info)


UPSTREAM_FLAGS = {  # the original infer.py's flags, mapped onto this one's
    "use_gpu": "False is --device=cpu, True --device=auto (the GPU where there is one); a --device given wins",
    "use_flash_attention_2": "True is --attn_implementation=auto (flash-attention-2 where it runs: CUDA, the "
                             "package installed), False --attn_implementation=sdpa",
    "assistant_model_path": "None only: decoding with an assistant (draft) model is not supported"}


def upstream_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Map the original infer.py's flags onto this one's (--use_gpu=False → --device=cpu, …), saying so."""
    try:
        if args.upstream_use_gpu is not None and not str2bool(args.upstream_use_gpu) and args.device == "auto":
            args.device = "cpu"
        if args.upstream_use_flash_attention_2 is not None and args.attn_implementation == "auto":
            args.attn_implementation = "auto" if str2bool(args.upstream_use_flash_attention_2) else "sdpa"
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.upstream_assistant_model_path not in (None, "None", ""):
        parser.error(f"--assistant_model_path={args.upstream_assistant_model_path}: decoding with an assistant (draft) "
                     "model is not supported; leave it out")
    note_upstream_flags(args, UPSTREAM_FLAGS)


# the output formats whose segments are timed (--timestamps=auto turns them on)
TIMED_FORMATS = (*CUE_FORMATS, "json")


def main(argv: list[str] | None = None) -> int:
    # 1. Arguments
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ("; several files go after one --audio_path separated by spaces (--audio_path a.wav b.wav), not after "
                "--audio_path=" if not any(e.startswith("-") for e in extra) else "")
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    setup_logging(args.verbose)
    upstream_flags(parser, args)
    args.backend = resolve_backend(args.backend, [args.model_path])
    check_device_arg(parser, args.device, args.backend)
    if args.use_bettertransformer:
        logger.warning("--use_bettertransformer is deprecated upstream (optimum BetterTransformer); "
                       "PyTorch SDPA attention is used instead, which is as fast")
    if args.backend == "ct2" and (args.use_compile or args.dtype != "auto"):
        parser.error("--use_compile and --dtype apply to --backend=transformers; for ct2 use --compute_type")
    formats = None
    if args.output_format is not None or args.output_dir is not None:
        asked = args.output_format or ["txt"]  # the flag given twice writes both formats (the last one was kept)
        formats = list(OUTPUT_FORMATS) if "all" in asked else list(dict.fromkeys(asked))
    if args.timestamps is None:  # subtitles and JSON segments need segment times: without them a cue or a
        # JSON segment is a whole 30 s chunk (a 57 s file's JSON held 2 segments of 27 s; with timestamps 12 sentences)
        args.timestamps = bool(formats and set(TIMED_FORMATS) & set(formats))
    try:
        options = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.cpu_threads < 0:
        parser.error(f"--cpu_threads must be >= 0 (0: the engine's choice), got {args.cpu_threads}")
    for flag, value, ok, need in (
            ("--compression_ratio_threshold", args.compression_ratio_threshold, lambda v: v > 0, "> 0"),
            ("--logprob_threshold", args.logprob_threshold, lambda v: -math.inf < v <= 0, "a log-probability <= 0"),
            ("--no_speech_threshold", args.no_speech_threshold, lambda v: 0 <= v <= 1, "a probability in [0, 1]")):
        if value is not None and not ok(value):  # (nan fails every test)
            parser.error(f"{flag} must be {need}, got {value}")
    try:
        layout = CueLayout(args.max_line_width, args.max_line_count)
    except ValueError as e:
        parser.error(f"--max_line_width / --max_line_count: {e}")
    if args.subtitle_words and not options.word_timestamps:
        parser.error("--subtitle_words needs --word_timestamps=True")
    if formats and set(CUE_FORMATS) & set(formats) and not options.timestamps and not options.word_timestamps:
        logger.warning("--timestamps=False: a subtitle cue's time is its chunk's (up to 30 s of speech) shared by "
                       "text length, an estimate that may run across pauses; leave --timestamps on for timed cues")
    output_dir = args.output_dir or "output"
    files = collect_audio_files(args.audio_path)
    if not files:
        parser.error(f"no audio files found in {', '.join(args.audio_path)}")
    missing = [f for f in files if not os.path.isfile(f)]
    if len(missing) == len(files):  # before the model loads: a typo should not cost a model load
        parser.error(f"--audio_path: {len(missing)} of {len(files)} file(s) not found: {', '.join(missing[:5])}")
    if formats:  # before the model loads: a transcript that cannot be written is work lost
        check_output_path(parser, "--output_dir", output_dir, folder=True)

    # 2. Model (ct2's auto encoder with AMX depends on how much audio there is: utils.transcribe.resolve_ct2_encoder)
    # (asked only where the choice depends on it: without AMX auto never takes PyTorch, and ffprobe costs ~40 ms a file)
    auto_encoder = args.backend == "ct2" and args.ct2_encoder == "auto" and args.device in ("auto", "cpu")
    seconds = total_seconds(files, TORCH_ENCODER_MIN_AUDIO_S) if auto_encoder and cpu_has_amx() else None
    try:
        engine = load_transcriber(args.model_path, args.backend, device=args.device, dtype=args.dtype,
                                  compute_type=args.compute_type, local_files_only=args.local_files_only,
                                  use_compile=args.use_compile, attn_implementation=args.attn_implementation,
                                  cpu_threads=args.cpu_threads, ct2_encoder=args.ct2_encoder, audio_seconds=seconds)
    except (ValueError, ModelResolutionError) as e:
        logger.error("cannot load %s: %s", args.model_path, e)
        return 2
    except KeyboardInterrupt:
        print("interrupted while the model loaded: no file transcribed", file=sys.stderr)
        return 130
    options = replace(options, task=resolve_task(args.task, engine))
    try:
        engine.check_task(options.task, options.language, flag=task_flag(args.task))
        engine.check_language(options.language)
    except ValueError as e:
        logger.error("%s (%s)", e, args.model_path)
        return 2
    # short files are windows decoded alone: where that runs faster is timed (about 0.3 s) and recorded for this
    # machine; one file takes the recorded decision (the test would cost what it saves), several are timed again
    try:
        engine.tune_lone_decoder(record=lone_decoder_record(), reuse=len(files) == 1)
    except KeyboardInterrupt:
        print("interrupted before the first file: no file transcribed", file=sys.stderr)
        return 130

    # 3. Transcribe every file; a failing file is reported and skipped
    failed: list[str] = []
    done: list[str] = []
    try:
        _transcribe_files(engine, files, options, formats, output_dir, layout, args, failed, done)
    except KeyboardInterrupt:  # Ctrl-C: one line, not PyTorch's traceback; each transcript is written whole or not
        print(f"interrupted: {len(done)} of {len(files)} files done" + (f", {len(failed)} failed" if failed else "")
              + (f"; {files[len(done) + len(failed)]} was not finished" if len(done) + len(failed) < len(files)
                 else ""), file=sys.stderr)
        return 130
    if failed:
        logger.error("%d of %d files failed: %s", len(failed), len(files), ", ".join(failed))
        return 1
    return 0


def _transcribe_files(engine: Transcriber, files: list[str], options: DecodeOptions, formats: list[str] | None,
                      output_dir: str, layout: CueLayout, args: argparse.Namespace, failed: list[str],
                      done: list[str]) -> None:
    """Transcribe, print and write each file in turn; each file that fails is added to ``failed``, each other one to
    ``done`` once its transcript is written."""
    many = len(files) > 1
    for path, stem in zip(tqdm(files, desc="transcribing", unit="file", disable=not many), _unique_stems(files)):
        try:
            transcript = transcribe_one(engine, path, options, stream=not many and options.timestamps)
        except AudioLoadError as e:
            logger.error("%s", e)
            failed.append(path)
            continue
        if options.task == "translate" and has_unspaced_script(transcript.text):
            logger.warning("%s: the translation holds Chinese/Japanese characters (%s was likely fine-tuned to "
                           "transcribe, and does not translate reliably): translate with an original Whisper model, "
                           "e.g. --model_path=openai/whisper-base", path, args.model_path)
        if not (not many and options.timestamps):  # a single file with timestamps was printed as it went
            text = format_stdout(transcript, options.timestamps)
            if many:
                tqdm.write(f"{path}:\n{text}" if options.timestamps else f"{path}\t{text}")
            else:
                print(text, flush=True)
        if formats:
            try:
                for written in write_transcript(transcript, output_dir, stem, formats,
                                                word_cues=args.subtitle_words, source=path, layout=layout):
                    logger.info("wrote %s", written)
            except OSError as e:  # the transcript was printed above; the other files still go on
                logger.error("%s: cannot write its transcript to %s (%s)", path, output_dir, e)
                failed.append(path)
                continue
        done.append(path)


if __name__ == "__main__":
    sys.exit(main())
