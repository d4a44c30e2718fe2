"""Real-time transcription from the microphone (or a file played as a stream), with stable committed text.

    python realtime_transcribe.py                                  # default microphone, ct2 whisper-base
    python realtime_transcribe.py --list_devices
    python realtime_transcribe.py --audio_path=talk.wav --simulate_realtime=False --language=zh

Every ``--chunk_seconds`` the rolling buffer is decoded again; words two consecutive hypotheses agree on
are committed (LocalAgreement-2, see utils/streaming.py) and printed normally, the tentative tail in grey
(on a terminal; a pipe gets one ``[start → end] text`` line per commit). silero-vad skips silence and
closes utterances. A second pass decodes the closed utterances again together, a block of at least 6 s
(a few sentences) at a time, in one 30 s window as offline transcription does, and prints each block as a ``revised``
line: the final text (``--output`` gets it), which reads as well as offline, about 4-9 s after the speech
(``--revise_seconds=0``: the live text only). Ctrl-C stops cleanly (exit code 0): the tentative tail is committed
and printed (exit code 130 only when Ctrl-C comes before streaming started, e.g. while the model loads).

At the end a report (stderr, and ``--report_path`` as JSON) gives the latency from a word's end in the audio
to its commit (mean, p90) and, for ``--compare_offline``, the CER of the committed (live) text and of the final
text against the offline transcript of the same audio by the same model (after Ctrl-C: of the audio heard until
then; a second Ctrl-C skips it). With ``--simulate_realtime=False`` the clock is simulated (audio time when a decode
starts + its measured compute time), so the figures hold for real time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from typing import IO, Any

from utils.audio import SAMPLE_RATE, AudioLoadError, load_audio
from utils.cli import (add_backend_arg, add_bool, add_ct2_encoder_arg, add_decoding_args, add_encoder_window_arg,
                       add_model_args, add_to_simple_arg, check_device_arg, check_output_path, finite_float,
                       make_parser, optional_path, resolve_encoder_window, setup_logging)
from utils.audio_sources import AudioDeviceError, FileSource, MicrophoneSource, list_input_devices
from utils.io import write_json_atomic
from utils.streaming import (
    EngineHypothesis,
    Reviser,
    Revision,
    StreamingPolicy,
    StreamResult,
    Update,
    StreamToken,
    join_words,
    run_stream,
    silero_vad_fn,
    stop_signals_as_ctrl_c,
)
from utils.subtitles import format_timestamp, split_at_pauses, text_width

logger = logging.getLogger(__name__)

_DIM, _RESET = "\033[2m", "\033[0m"
# --encoder_window_seconds=auto on a CPU: a buffer is encoded in at least 10 s (buffer + 5 s, rounded up to 5 s), not
# evaluation's 15: most buffers are 2-6 s. Measured back to back (tools/bench_stream.py --windows=15,10, 2-core EPYC,
# AVX2 only): RTF 0.69 -> 0.55 (espeak English), 0.55 -> 0.43 (real English), 0.64 -> 0.44 (Mandarin, demo model),
# 0.82 -> 0.71 (one sentence said 6 times), latency 0.0-0.2 s lower, WER/CER the same or lower on all four. A decode
# that loops in a short window is decoded again in 30 s (utils.transcribe), which an earlier 10 s trial lacked.
STREAM_CPU_WINDOW_S = 10.0
# Beam of the decode that closes an utterance (--close_beam_size). Its words are committed on one reading, and at the
# end of an utterance heard alone greedy decoding misreads most ("opens at nine and closes at five" -> "I'm and close
# at I'm"); one decode per utterance, so a wide beam there costs little with ct2. Not with transformers: its beam
# search made real English's mean latency 2.91 -> 6.48 s (RTF 0.86 -> 0.97), so there it stays --beam_size.
# Measured in README (Streaming).
CLOSE_BEAM_SIZE = 5
# Second pass (--revise_seconds): the closed utterances of at least this many seconds decoded again together in one 30 s
# window. A stream reads each utterance alone and misreads words that offline transcription reads from the sentences
# around them. A few sentences are context enough: blocks of 6 s read as well as blocks of 20 s (final error 0.107 vs
# 0.105, mean of 14 runs: six recordings in two instruction profiles, two in noise), their text comes 4-9 s after the
# speech instead of 11-16 s, and the live words wait less for a shorter block's decode; a sentence alone reads worse
# (tools/bench_stream.py --alone=True). Measured in README (Streaming).
REVISE_SECONDS = 6.0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    add_decoding_args(parser)
    g = parser.add_argument_group("engine")
    add_backend_arg(g, default="ct2", help="inference backend (ct2 = CTranslate2 int8 on CPU, the fast one)")
    g.add_argument("--compute_type", type=str, default="auto", help="ct2: auto = int8 on CPU, float16 on GPU")
    g.add_argument("--cpu_threads", type=int, default=-1,
                   help="ct2 CPU threads; -1 = auto: 1 when the encoder runs in PyTorch bf16 (one stream's small "
                        "decoding steps are fastest on one thread), else CTranslate2's default; 0 = its default")
    add_ct2_encoder_arg(g, auto="torch with AMX, else ct2 (onnxruntime int8 is no faster in streaming's short windows)")
    g.add_argument("--beam_size", type=int, default=1, help="beam width (1 = greedy, fastest)")
    g.add_argument("--close_beam_size", type=int, default=None,
                   help="beam width of the decode that closes an utterance when the last one did not hear its end: "
                        "its last words are committed on that one reading, with no second hypothesis to agree with "
                        f"(one decode per utterance); default: {CLOSE_BEAM_SIZE} (or --beam_size if wider) with ct2, "
                        "--beam_size with transformers (its beam search would make the stream fall behind)")
    add_to_simple_arg(g)
    add_bool(g, "word_timestamps", False, "time committed words by cross-attention alignment (more exact word times "
             "and latency figures; slower: an alignment pass per decode)")
    s = parser.add_argument_group("streaming")
    s.add_argument("--chunk_seconds", type=finite_float, default=1.0, help="new audio between two decodes (s)")
    s.add_argument("--buffer_trim_seconds", type=finite_float, default=10.0,
                   help="trim the buffer at a committed segment end once it is longer than this (s)")
    s.add_argument("--max_buffer_seconds", type=finite_float, default=25.0, help="hard buffer limit, ≤ 30 (s)")
    add_encoder_window_arg(s, STREAM_CPU_WINDOW_S)
    add_bool(s, "vad", True, "silero-vad: skip silence, close utterances at pauses")
    s.add_argument("--vad_threshold", type=finite_float, default=0.5, help="speech probability threshold")
    s.add_argument("--min_silence_seconds", type=finite_float, default=0.6, help="silence that closes an utterance (s)")
    add_bool(s, "wait_in_pause", True, "a decode due in the first 0.3 s of silence after speech waits until 0.3 s "
             "were heard (or speech resumes): it reads the utterance's end, and the pause needs no decode of its own")
    s.add_argument("--prompt_chars", type=int, default=0,
                   help="characters of committed text (that left the buffer) given to the decoder as prompt; 0 = none")
    s.add_argument("--context_seconds", type=finite_float, default=0.0,
                   help="audio of the utterances just closed (whole ones, up to this many seconds) decoded again with "
                        "the next one, so the decoder hears what came before: fewer errors, more compute per decode "
                        "(for a GPU); 0 = each utterance alone, the fastest")
    s.add_argument("--revise_seconds", type=finite_float, default=None,
                   help="second pass: once the utterances closed since the last block span this many seconds (at "
                        "most 28), they are decoded again together in one 30 s window (beam --close_beam_size) and "
                        "their text replaced: the final text ('revised' lines, --output, the report) reads as offline "
                        f"transcription does, a block later; 0 = live text only; default: {REVISE_SECONDS:g} with "
                        "the VAD (it finds the utterances), 0 with --vad=False")
    src = parser.add_argument_group("source")
    src.add_argument("--audio_path", type=optional_path, default=None,
                     help="stream this file instead of the microphone")
    add_bool(src, "simulate_realtime", True,
             "file source: play at real-time speed; False = as fast as possible with a simulated clock")
    add_bool(src, "list_devices", False, "list audio input devices and exit")
    src.add_argument("--device_index", type=int, default=None, help="input device index (see --list_devices)")
    src.add_argument("--samplerate", type=int, default=None,
                     help="capture rate in Hz (default: the device's); resampled to 16 kHz")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=optional_path, default=None,
                     help="append the final text's lines with timestamps to this file: the second pass's blocks "
                          "(the committed lines with --revise_seconds=0)")
    out.add_argument("--report_path", type=optional_path, default=None,
                     help="write the latency/CER report as JSON here")
    add_bool(out, "compare_offline", True,
             "at the end, transcribe the whole audio offline and report the CER of the streamed text")
    add_bool(out, "verbose", False, "debug logging (shows every hypothesis)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag conflicts and ranges, as parser errors (exit 2)."""
    if args.chunk_seconds <= 0:
        parser.error(f"--chunk_seconds must be > 0, got {args.chunk_seconds}")
    if not 0 < args.buffer_trim_seconds <= args.max_buffer_seconds <= 30:
        parser.error("need 0 < --buffer_trim_seconds <= --max_buffer_seconds <= 30 "
                     f"(got {args.buffer_trim_seconds}, {args.max_buffer_seconds})")
    if args.chunk_seconds >= args.buffer_trim_seconds:
        parser.error(f"--chunk_seconds ({args.chunk_seconds}) must be smaller than --buffer_trim_seconds")
    if not 0 <= args.context_seconds <= args.buffer_trim_seconds:
        parser.error(f"--context_seconds must be in [0, --buffer_trim_seconds = {args.buffer_trim_seconds}], "
                     f"got {args.context_seconds}")
    if args.context_seconds > 0 and not args.vad:
        parser.error("--context_seconds keeps the utterances the VAD closed: it needs --vad=True")
    if args.revise_seconds is None:
        args.revise_seconds = REVISE_SECONDS if args.vad else 0.0
    elif not 0 <= args.revise_seconds <= 28:
        parser.error(f"--revise_seconds must be in [0, 28] (a block is decoded in one 30 s window), "
                     f"got {args.revise_seconds}")
    elif args.revise_seconds > 0 and not args.vad:
        parser.error("--revise_seconds decodes again the utterances the VAD closed: it needs --vad=True")
    if args.prompt_chars < 0:
        parser.error(f"--prompt_chars must be >= 0, got {args.prompt_chars}")
    if args.beam_size < 1:
        parser.error(f"--beam_size must be >= 1, got {args.beam_size}")
    if args.close_beam_size is None:
        args.close_beam_size = max(CLOSE_BEAM_SIZE if args.backend == "ct2" else 1, args.beam_size)
    elif args.close_beam_size < args.beam_size:
        parser.error(f"--close_beam_size ({args.close_beam_size}) must be >= --beam_size ({args.beam_size})")
    if args.samplerate is not None and args.samplerate <= 0:
        parser.error(f"--samplerate must be positive, got {args.samplerate}")
    if not 0 < args.vad_threshold < 1:
        parser.error(f"--vad_threshold must be in (0, 1), got {args.vad_threshold}")
    if not args.min_silence_seconds > 0:
        parser.error(f"--min_silence_seconds must be > 0, got {args.min_silence_seconds}")
    if args.cpu_threads < -1:
        parser.error(f"--cpu_threads must be >= 0 (0: CTranslate2's choice; -1: auto), got {args.cpu_threads}")
    if args.audio_path is not None and os.path.isdir(args.audio_path):
        parser.error(f"--audio_path={args.audio_path} is a folder: give one audio file (infer.py transcribes folders)")
    if args.audio_path is not None and (args.device_index is not None or args.samplerate is not None):
        parser.error("--device_index/--samplerate select a microphone; they cannot be used with --audio_path")
    check_output_path(parser, "--output", args.output, folder=False)
    check_output_path(parser, "--report_path", args.report_path, folder=False)


LINE_PAUSE_S = 2.0  # a pause this long between a revised block's words starts a new line
MIN_LINE_S = 0.1  # a line's shortest span (s)


def commit_line(words: list[StreamToken], after: float = 0.0) -> tuple[str, float]:
    """(``[start --> end] text``, end) for words committed together; the start is not before ``after`` (the end of the
    line before: word times inside a decode are estimates, and the next commit's first word can start a little
    before the last one's estimated end); the end at least ``MIN_LINE_S`` after the start (a line "[00:00:09.682 -->
    00:00:09.682] 步吧？" had words whose estimated times lay inside the line before)."""
    start = max(words[0].start, after)
    end = max(words[-1].end, start + MIN_LINE_S)
    return f"[{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}] {join_words(words)}", end


class Display:
    """Committed text and the tentative tail, on a terminal or as lines.

    On a terminal the current line shows committed words normally and the tentative tail dimmed, and is
    redrawn in place; a new line starts when an utterance closes or the line is full. Otherwise (a pipe,
    a file) every commit is printed as one ``[start --> end] text`` line and the tentative tail is not shown.
    A block of the second pass is printed as one ``revised [start --> end] text`` line (both ways).
    ``log`` (the ``--output`` file) gets the final text, flushed at once: with ``revised`` the second pass's blocks
    as ``[start --> end] text`` lines, else the committed lines.
    """

    def __init__(self, stream: IO[str], log: IO[str] | None = None, tty: bool | None = None,
                 revised: bool = False) -> None:
        self.stream, self.log = stream, log
        self.tty = stream.isatty() if tty is None else tty
        self.revised = revised
        self.line: list[StreamToken] = []
        self.tentative: list[StreamToken] = []
        self.printed_end = 0.0  # end of the last committed line (s): lines never overlap
        self.revised_end = 0.0  # the same for the second pass's lines
        self.gone = False  # the terminal or pipe went away: the text still goes to ``log`` and the report

    def _write(self, text: str) -> None:
        """``text`` to the stream, flushed; a stream that went away (the terminal closed, EIO; the pipe's reader
        gone) is not written to again, and the stream goes on (SIGHUP ends it as Ctrl-C does)."""
        if self.gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as e:
            self.gone = True
            logger.warning("the output stream went away (%s): the text still goes to --output and the report", e)

    def _redraw(self, tentative: list[StreamToken]) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        done = join_words(self.line)
        tail = join_words(self.line + tentative)[len(done):] if tentative else ""
        while self.line and text_width(done) + text_width(tail) > width:  # start a new line, keep the newest words
            self._write("\r\033[K" + done + "\n")
            self.line = []
            done = ""
            tail = join_words(tentative)
        if text_width(tail) > width:
            tail = "…" + tail[-(width // 2):]
        self._write("\r\033[K" + done + _DIM + tail + _RESET)

    def update(self, update: Update) -> None:
        if update.committed:
            line, self.printed_end = commit_line(update.committed, self.printed_end)
            if self.log is not None and not self.revised:
                self.log.write(line + "\n")
                self.log.flush()
            if not self.tty:
                self._write(line + "\n")
        if not self.tty:
            return
        self.line += update.committed
        self.tentative = update.tentative
        if update.utterance_end and self.line:  # finish the utterance's line, the tentative tail goes below
            self._redraw([])
            self._write("\n")
            self.line = []
        self._redraw(update.tentative)

    def revise(self, revision: Revision) -> None:
        """A second-pass block: its ``revised`` lines (above the current line on a terminal) and, with ``revised``,
        its lines in ``log``: one per stretch of words without a pause of ``LINE_PAUSE_S`` (a block gathers
        utterances until it is long enough, across a silence of any length: one line spanned 0:00 → 0:25 with 20 s
        of silence in it)."""
        lines = []
        for words in split_at_pauses(revision.words, LINE_PAUSE_S, lambda w: w.start, lambda w: w.end):
            # a block's first words can be timed a little before the last block's end
            line, self.revised_end = commit_line(words, self.revised_end)
            lines.append(line)
        if not revision.words:  # the block read as no speech: its live words are gone from the final text
            start = max(revision.start, self.revised_end)
            lines.append(f"[{format_timestamp(start, '.')} --> {format_timestamp(max(revision.end, start), '.')}] ")
            self.revised_end = max(self.revised_end, revision.end)
        if self.log is not None and self.revised and revision.words:  # the final text: a block of no speech has none
            self.log.write("".join(line + "\n" for line in lines))
            self.log.flush()
        if not self.tty:
            self._write("".join("revised " + line + "\n" for line in lines))
            return
        self._write("".join("\r\033[K" + _DIM + "revised " + _RESET + line + "\n" for line in lines))
        self._redraw(self.tentative)


def print_devices() -> int:
    """``--list_devices``: one line per input device; 1 with a message when there is none."""
    try:
        devices = list_input_devices()
    except AudioDeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not devices:
        print("error: no audio input device found (is a microphone connected and allowed?)", file=sys.stderr)
        return 1
    for d in devices:
        mark = "*" if d["is_default"] else " "
        print(f"{mark} {d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")
    return 0


def build_policy(args: argparse.Namespace, hypothesis: EngineHypothesis) -> StreamingPolicy:
    """The streaming policy on top of the engine (and silero-vad unless --vad=False)."""
    return StreamingPolicy(
        hypothesis,
        vad_fn=silero_vad_fn() if args.vad else None,
        trim_s=args.buffer_trim_seconds,
        max_buffer_s=args.max_buffer_seconds,
        min_silence_s=args.min_silence_seconds,
        vad_threshold=args.vad_threshold,
        prompt_chars=args.prompt_chars,
        context_s=args.context_seconds,
        close_fn=hypothesis.closing,
        wait_in_pause=args.wait_in_pause,
    )


def stream_encoder(args: argparse.Namespace) -> str:
    """--ct2_encoder for streaming: auto is PyTorch bf16 with AMX, else CTranslate2; not infer.py's onnxruntime int8
    on a CPU with VNNI: in streaming's short windows it encoded no faster (10 s window: 0.057 vs 0.056 s) and the
    streamed text read worse on two recordings of four, equal on the others (README, Speed)."""
    if args.ct2_encoder != "auto" or args.backend != "ct2":
        return args.ct2_encoder
    from utils.device import resolve_ct2_device
    from utils.transcribe import resolve_ct2_encoder

    return "ct2" if resolve_ct2_encoder("auto", resolve_ct2_device(args.device),
                                        compute_type=args.compute_type) == "onnx" else "auto"


def encoder_window(args: argparse.Namespace) -> float | None:
    """--encoder_window_seconds resolved (utils.cli.resolve_encoder_window) for the device the backend will use."""
    if args.encoder_window_seconds != "auto":
        return args.encoder_window_seconds
    from utils.device import resolve_ct2_device, resolve_device

    device = resolve_ct2_device(args.device) if args.backend == "ct2" else resolve_device(args.device)
    return resolve_encoder_window("auto", device, STREAM_CPU_WINDOW_S)


def stream_threads(args: argparse.Namespace) -> int:
    """--cpu_threads, with -1 resolved: 1 for the ct2 backend on a CPU whose encoder runs in PyTorch bf16 (AMX)."""
    if args.cpu_threads >= 0:
        return args.cpu_threads
    if args.backend != "ct2":
        return 0
    from utils.device import resolve_ct2_device
    from utils.transcribe import uses_torch_encoder

    device = resolve_ct2_device(args.device)
    return 1 if device == "cpu" and uses_torch_encoder(args.ct2_encoder, device, compute_type=args.compute_type) else 0


def make_report(result: StreamResult, args: argparse.Namespace, offline_text: str | None) -> dict[str, Any]:
    """Latency figures and, with an offline transcript, the CER of the streamed text."""
    report: dict[str, Any] = dict(
        source=args.audio_path or "microphone", model_path=args.model_path, backend=args.backend,
        chunk_seconds=args.chunk_seconds, encoder_window_s=args.encoder_window_seconds,
        beam_size=args.beam_size, close_beam_size=args.close_beam_size,
        simulated_clock=bool(args.audio_path and not args.simulate_realtime),
        interrupted=result.interrupted, source_error=result.error, **result.latency_stats(),
        latency_note="word end times are interpolated inside Whisper segments by character count",
        text=result.text, revise_seconds=args.revise_seconds,
    )
    if args.revise_seconds > 0:
        report["final_text"] = result.final_text
    if offline_text is not None:
        report["offline_text"] = offline_text
        report["cer_vs_offline"] = vs_offline(offline_text, result.text)
        if args.revise_seconds > 0:
            report["final_cer_vs_offline"] = vs_offline(offline_text, result.final_text)
    return report


def vs_offline(offline_text: str, text: str) -> float | None:
    """The CER of ``text`` against the offline transcript (4 decimals); None where the offline transcript is empty
    and ``text`` is not: the rate is infinite there, and JSON has no Infinity (a 0.1 s clip read "Thank you." live
    and nothing offline, and the report was no JSON)."""
    from utils.text import error_rate

    rate = error_rate([offline_text], [text], "cer")
    return round(rate, 4) if math.isfinite(rate) else None


def main(argv: list[str] | None = None) -> int:
    # 1. Arguments
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    check_device_arg(parser, args.device, args.backend)
    args.encoder_window_seconds = encoder_window(args)  # auto resolved once: the decode and the report use it
    args.ct2_encoder = stream_encoder(args)
    setup_logging(args.verbose)
    if args.list_devices:
        return print_devices()

    # 2. The source first: fail fast, before loading a model, when there is no microphone
    if args.audio_path is not None:
        try:
            source = FileSource(load_audio(args.audio_path), realtime=args.simulate_realtime)
        except AudioLoadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted before streaming started", file=sys.stderr)
            return 130
    else:
        try:
            source = MicrophoneSource(args.device_index, args.samplerate)
        except AudioDeviceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    # 3. The engine and the policy
    from utils.models import ModelResolutionError
    from utils.transcribe import DecodeOptions, load_transcriber, resolve_task, task_flag

    try:
        options = DecodeOptions(language=args.language, task=args.task or "transcribe", beam_size=args.beam_size,
                                timestamps=True,
                                temperatures=(0.0,), to_simple=args.to_simple, hotwords=args.hotwords,
                                initial_prompt=args.initial_prompt, word_timestamps=args.word_timestamps,
                                encoder_window_s=args.encoder_window_seconds)
    except ValueError as e:
        parser.error(str(e))
    try:
        engine = load_transcriber(args.model_path, args.backend, device=args.device, compute_type=args.compute_type,
                                  local_files_only=args.local_files_only, cpu_threads=stream_threads(args),
                                  ct2_encoder=args.ct2_encoder)
        options = replace(options, task=resolve_task(args.task, engine))
        engine.check_task(options.task, options.language, flag=task_flag(args.task))
        engine.check_language(options.language)
        engine.tune_lone_decoder()  # every step decodes a window alone
        hypothesis = EngineHypothesis(engine, options, close_beam_size=args.close_beam_size)
        policy = build_policy(args, hypothesis)
    except (ModelResolutionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted before streaming started", file=sys.stderr)
        return 130

    # 4. Stream
    try:
        if args.output:  # a new folder is made, as infer.py's --output_dir is
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        log = open(args.output, "a", encoding="utf-8") if args.output else None
    except OSError as e:
        print(f"error: --output {args.output}: cannot open for appending ({e.strerror})", file=sys.stderr)
        return 1
    display = Display(sys.stdout, log, revised=args.revise_seconds > 0)
    reviser = Reviser(hypothesis.revising, block_s=args.revise_seconds) if args.revise_seconds > 0 else None
    stream = dict(chunk_s=args.chunk_seconds, keep_audio=args.compare_offline, reviser=reviser,
                  on_update=lambda u, t: display.update(u), on_revision=lambda r, t: display.revise(r))
    try:
        with stop_signals_as_ctrl_c():  # kill (SIGTERM) and a closed terminal (SIGHUP) end the stream as Ctrl-C does
            if isinstance(source, MicrophoneSource):
                with source:
                    logger.info("listening on %r at %d Hz; Ctrl-C to stop", source.device_name, source.samplerate)
                    if source.samplerate < SAMPLE_RATE:  # upsampled: the missing band is not brought back
                        logger.warning("the microphone records at %d Hz, below Whisper's %d Hz: expect more errors "
                                       "(telephone-band speech); choose %d Hz or more with --samplerate if the device "
                                       "allows", source.samplerate, SAMPLE_RATE, SAMPLE_RATE)
                    result = run_stream(source, policy, **stream)
            else:
                logger.info("streaming %s (%s); Ctrl-C to stop", args.audio_path,
                            "real time" if args.simulate_realtime else "as fast as possible, simulated clock")
                result = run_stream(source, policy, **stream)
    except AudioDeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if log is not None:
            log.close()

    # 5. Report
    offline_text = None
    if result.audio is not None:  # also after Ctrl-C (how a microphone session ends): the audio heard so far
        logger.info("transcribing the %.1f s heard offline for the CER%s", result.audio_s,
                    " (Ctrl-C again to skip)" if result.interrupted else "")
        t0 = time.perf_counter()
        try:
            offline_text = engine.transcribe(result.audio, DecodeOptions(
                language=hypothesis.options.language, task=hypothesis.options.task, beam_size=args.beam_size,
                temperatures=(0.0,), to_simple=args.to_simple, hotwords=args.hotwords,
                initial_prompt=args.initial_prompt)).text
            logger.info("offline transcript in %.1f s", time.perf_counter() - t0)
        except KeyboardInterrupt:
            logger.warning("offline comparison interrupted; the report has no CER")
    report = make_report(result, args, offline_text)
    summary = {k: report[k] for k in ("audio_s", "words", "mean_latency_s", "p90_latency_s", "real_time_factor")}
    for key in ("mean_revision_lag_s", "cer_vs_offline", "final_cer_vs_offline"):
        if key in report:
            summary[key] = report[key]
    if args.report_path:  # first: the terminal may be gone (SIGHUP), the file is not
        write_json_atomic(args.report_path, report)
    with contextlib.suppress(OSError):
        print("report: " + json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    if result.error is not None:  # the words heard before it are all out (and in --output)
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
