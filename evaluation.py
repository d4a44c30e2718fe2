"""Score a Whisper model on a test manifest: CER or WER, with a per-utterance JSON report.

    python evaluation.py --model_path=models/whisper-tiny-finetune --metric=cer --test_data=dataset/test.json
    python evaluation.py --compare openai/whisper-base models/whisper-base-finetune --language=Chinese

``--compare BASE FINETUNED`` writes the forgetting report instead: both models on the test set, on a general
set (``--general_data``, default the real English recordings in dataset/real/) and on no-speech clips, with error
rates, hallucination on silence, repetition loops, insertions and punctuation kept, as JSON and a markdown table.

Decoding uses the same engine as infer.py (utils/transcribe.py), batched. The decoder prompt comes from the record's
``language`` (as training's eval decodes it), else ``--language``, and ``--task``; never from the reference text.
References and hypotheses go through the same normalisation (utils/text.scoring_text: punctuation incl. full-width,
emoji and invisible characters, traditional → simplified, case; for English — the record's ``language``, else
``--language`` — also Whisper's English normaliser: "ten" and "10" are one word, fillers dropped; for Chinese — also
a reference in Chinese characters without a language — numbers spelled as they are read: "25度" and "二十五度",
"2019年" and "二零一九年" are one text) before counting edits.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import islice

import numpy as np
from tqdm import tqdm

from utils.audio import SAMPLE_RATE, WINDOW_S, AudioLoadError, load_record_audio
from utils.cli import (add_audio_length_args, add_bool, add_dataset_args, add_decoding_args, add_encoder_window_arg,
                       add_engine_args, add_hidden_alias, add_model_args, add_upstream_flags, check_device_arg,
                       check_output_path, make_parser, note_upstream_flags, optional_path, path_arg, positive_int,
                       resolve_backend, resolve_encoder_window, seed_int, setup_logging)
from utils.data import (Manifest, ManifestError, Record, check_clips, check_translation_references, load_manifest,
                        log_clip_warnings)
from utils.hf_data import DatasetOptions, is_manifest, iter_dataset_records, load_data
from utils.io import write_json_atomic, write_text_atomic
from utils.languages import AUTO_LANGUAGE, has_unspaced_script, language_code
from utils.text import METRICS, ErrorCounts, count_errors, normalize_text, scoring_language, scoring_text
from utils.models import ModelResolutionError
from utils.transcribe import (DecodeOptions, Transcriber, fine_tuned_task, load_transcriber, resolve_task,
                              task_flag)

logger = logging.getLogger(__name__)

# real English speech (dataset/real/README.md: JFK, LibriSpeech, LibriVox, CMU, a fast spontaneous talk)
DEFAULT_GENERAL_DATA = "dataset/real/real_en.json"
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def build_parser():
    parser = make_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    add_decoding_args(parser)
    parser.add_argument("--test_data", type=path_arg, default="dataset/test.json",
                        help="jsonlines test manifest, or a Hugging Face dataset: save_to_disk folder, audiofolder, "
                             "parquet file/glob/folder, hub name")
    add_dataset_args(parser, splits={"test_split": "test"}, streaming=True)
    parser.add_argument("--metric", type=str, default="cer", choices=METRICS,
                        help="cer (characters), wer (words) or mer (mixed: each Chinese/Japanese character and each "
                             "other word one unit, spaces between them or not; for code-switching speech)")
    parser.add_argument("--output", type=optional_path, default=None,
                        help="JSON report path (default: <model>_<metric>_report.json in the cwd, "
                             "<model>_<test data>_<metric>_report.json for a test set not named test)")
    add_engine_args(parser)
    add_encoder_window_arg(parser)
    parser.add_argument("--batch_size", type=int, default=16, help="utterances decoded at once")
    parser.add_argument("--beam_size", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument("--num_beams", type=int, default=None, help=argparse.SUPPRESS)  # the old name of --beam_size
    add_audio_length_args(parser, min_default=0.0,
                          max_help="; a clip longer than 30 s is read as infer.py reads a long file")
    add_hidden_alias(parser, "--min_duration", "--min_audio_len")
    add_hidden_alias(parser, "--max_duration", "--max_audio_len")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="score only the first N utterances (N ≥ 1; all when not given)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed for the sampled fallback decodes")
    add_bool(parser, "fallback", False, "temperature fallback on repetition / low log-probability (sampled, "
             "seeded); off by default: deterministic greedy/beam scores")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "FINETUNED"), default=None,
                        help="the forgetting report of two models (instead of --model_path)")
    parser.add_argument("--general_data", type=optional_path, default=DEFAULT_GENERAL_DATA,
                        help="--compare: a manifest of general speech (default: the real English recordings of "
                             "the toolkit's dataset/real/; dataset/general/general_en.json: espeak sentences with "
                             "numbers; None: no general set)")
    parser.add_argument("--general_metric", type=str, default="wer", choices=METRICS,
                        help="--compare: metric of the general set")
    add_bool(parser, "word_timestamps", False, "add each utterance's words with times and probabilities to the "
             "report (low-probability words point at likely errors)")
    add_bool(parser, "verbose", False, "debug logging")
    add_upstream_flags(parser, UPSTREAM_FLAGS)
    return parser


UPSTREAM_FLAGS = {  # the original evaluation.py's flags, which scoring here does anyway or does not need
    "num_workers": "ignored (audio is read in the main process)",
    "remove_pun": "ignored: punctuation is always removed before scoring",
    "to_simple": "ignored: traditional Chinese is always read as simplified before scoring",
    "timestamps": "ignored: evaluation decodes without timestamp tokens"}


def load_batch(records: Sequence[Record]) -> tuple[list[np.ndarray], list[str | None]]:
    """Waveforms of a batch of records; a clip that cannot be read becomes None with its error."""
    audios, errors = [], []
    for r in records:
        try:
            audios.append(load_record_audio(r))
            errors.append(None)
        except AudioLoadError as e:
            audios.append(np.zeros(0, dtype=np.float32))
            errors.append(str(e))
    return audios, errors


def _batches(records: Iterable[Record], batch_size: int) -> Iterable[list[Record]]:
    it = iter(records)
    while batch := list(islice(it, batch_size)):
        yield batch


def evaluate(engine: Transcriber, records: Iterable[Record], options: DecodeOptions, metric: str,
             batch_size: int, locations: Sequence[str] | None = None, record_language: bool = True) -> dict:
    """Decode every record in batches and score it; returns the report (utterances sorted worst first).
    ``records`` may be a stream (a dataset read as it comes); ``locations``: each record's ``file:line`` (or dataset
    row) for messages. A clip that cannot be read is named, not scored, and counted (``utterances_failed``).
    ``record_language``: decode a record in its own ``language`` where it has one (else ``options.language``), except
    under ``options.language`` "auto", which asks for detection on every clip. Word times (``word_timestamps``) are
    the recording's: a slice's ``start_time`` is added."""
    utterances = []
    total = ErrorCounts(0, 0, 0, 0)
    failed = 0
    audio_s = 0.0
    index = 0  # of the batch's first record
    t0 = time.perf_counter()
    n_batches = -(-len(records) // batch_size) if isinstance(records, Sequence) else None
    # a line without a language is scored in the one it is decoded in: --language's, else the model's own (a model
    # fine-tuned on Chinese: its "25%" / "百分之二十五" are one text, as in training's eval), English for an
    # English-only model; unknown under auto (then Chinese for a reference in Chinese characters)
    decoded_in = engine.fixed_language(options) if engine.multilingual else "en"
    for batch in tqdm(_batches(records, batch_size), total=n_batches, desc="evaluating", unit="batch"):
        audios, errors = load_batch(batch)
        audio_s += sum(len(a) for a in audios) / SAMPLE_RATE
        ok = [j for j, e in enumerate(errors) if e is None]
        # each record in its own language where it has one (as training's eval decodes it), else --language's
        # (as codes: lines saying "Chinese" and lines without a language under --language=zh are one decode)
        spoken = {j: replace(options, language=batch[j].language).language
                  if record_language and batch[j].language and options.language != AUTO_LANGUAGE
                  else options.language for j in ok}
        hyps: dict[int, str] = {}
        words: dict[int, list[dict]] = {}
        for language in dict.fromkeys(spoken.values()):
            rows = [j for j in ok if spoken[j] == language]
            asked = replace(options, language=language)
            short = [j for j in rows if len(audios[j]) <= WINDOW_S * SAMPLE_RATE]
            transcripts = dict(zip(short, engine.transcribe_batch([audios[j] for j in short], asked)))
            # a clip longer than one window (--max_audio_len above 30) is read as infer.py reads a long file
            transcripts.update((j, engine.transcribe(audios[j], asked)) for j in rows if j not in transcripts)
            for j, t in transcripts.items():
                hyps[j] = t.text
                at = batch[j].start_time or 0.0  # a slice's words where they are in its recording
                words[j] = [{"word": w.word, "start": round(at + w.start, 3), "end": round(at + w.end, 3),
                             "probability": w.probability} for s in t.segments for w in s.words]
        for j, record in enumerate(batch):
            if errors[j] is not None:
                failed += 1
                logger.error("%s: not scored: %s", locations[index + j] if locations else record.audio_path,
                             errors[j])
                continue
            # the text's language: the speech's, or English for a translation (whose record names the speech's)
            language = "en" if options.task == "translate" else scoring_language(record.sentence,
                                                                                   record.language or decoded_in)
            counts = count_errors(record.sentence, hyps[j], metric, language=language)
            total = total + counts
            utterances.append({
                "audio": record.audio_path,
                # a slice of a recording: which one (several lines may read one file)
                **({"start_time": record.start_time} if record.start_time is not None else {}),
                **({"end_time": record.end_time} if record.end_time is not None else {}),
                **({"where": locations[index + j]} if locations else {}),
                "reference": record.sentence,
                "hypothesis": hyps[j],
                "reference_normalized": scoring_text(record.sentence, language, metric),
                "hypothesis_normalized": scoring_text(hyps[j], language, metric),
                "errors": counts.errors,
                "substitutions": counts.substitutions,
                "deletions": counts.deletions,
                "insertions": counts.insertions,
                "reference_length": counts.reference_length,
                "error_rate": None if counts.reference_length == 0 else round(counts.rate, 4),
                **({"words": words[j]} if options.word_timestamps else {}),
            })
        index += len(batch)
    elapsed = time.perf_counter() - t0
    unspaced = sum(1 for u in utterances if has_unspaced_script(u["reference"]))
    english = sum(1 for u in utterances
                  if _LATIN_WORD.search(u["reference"]) and not has_unspaced_script(u["reference"]))
    if metric == "cer" and 2 * english > len(utterances):
        logger.warning("--metric=cer on %d of %d references written in words (English…): each letter is then a unit "
                       "(a translation scored 1.04); use --metric=wer", english, len(utterances))
    if metric == "wer" and 2 * unspaced > len(utterances):
        logger.warning("--metric=wer on %d of %d references written without spaces (Chinese, Japanese…): a 'word' is "
                       "then a run between punctuation, often a whole clause; use --metric=cer for them (mer where "
                       "English words are mixed in)", unspaced, len(utterances))
    utterances.sort(key=lambda u: (-u["errors"], -(u["error_rate"] or 0.0)))
    no_speech = [u for u in utterances if not normalize_text(u["reference"])]  # no words (not even "um")
    return {
        "metric": metric,
        metric: None if total.reference_length == 0 else round(total.rate, 6),  # None: no reference text at all
        "errors": total.errors,
        "substitutions": total.substitutions,
        "deletions": total.deletions,
        "insertions": total.insertions,
        "reference_length": total.reference_length,
        "utterances_scored": len(utterances),
        "utterances_failed": failed,
        # hallucination: no-speech clips (empty sentence) that got text, whose errors are all insertions
        "no_speech_clips": len(no_speech),
        "no_speech_with_text": sum(1 for u in no_speech if u["hypothesis_normalized"]),
        "audio_seconds": round(audio_s, 2),
        "decode_seconds": round(elapsed, 2),
        "utterances": utterances,
    }


def clips_unreadable(records: Sequence[Record], locations: Sequence[str] | None, data: str) -> bool:
    """Check the files a manifest names before any model loads (a dataset's clips are its own bytes, read as they
    are scored): log the first 5 problems, each at its line, and return whether there were any."""
    if not isinstance(records, list) or locations is None:  # a dataset stream's clips are read as they are scored
        return False
    report = check_clips(records, locations)
    log_clip_warnings(report, data)
    for problem in report.problems[:5]:
        logger.error("%s", problem)
    if report.problems:
        logger.error("%d clip(s) of %s cannot be read as given%s; nothing was decoded", len(report.problems), data,
                     " (the first 5 above)" if len(report.problems) > 5 else "")
    return bool(report.problems)


def not_english_references(records: Sequence[Record] | Iterable[Record], task: str, data: str) -> bool:
    """Log and return True when ``--task=translate`` would score English output against references that are mostly
    Chinese or Japanese (CER 2.92 on the demo set, without a warning); checked before a model loads (a stream: not
    checked, it is read while decoding)."""
    if task != "translate" or not isinstance(records, Sequence):
        return False
    try:
        check_translation_references((r.sentence for r in records), data)
    except ManifestError as e:
        logger.error("%s", e)
        return True
    return False


def warn_line_languages(records: Iterable[Record], language: str | None, data: str) -> None:
    """Warn when ``--language`` (a code, not auto) is not what the lines that name their own language say: each line
    is decoded in its own (a sentence marked Chinese was translated to English under --language=English)."""
    if language in (None, AUTO_LANGUAGE) or not isinstance(records, list):
        return
    other = [r.language for r in records if r.language and language_code(r.language) != language]
    if other:
        logger.warning("--language=%s: %d of %d lines of %s name their own language (%s) and are decoded in it; "
                       "--language applies to the lines without one (--language=auto detects on every line)",
                       language, len(other), len(records), data, ", ".join(sorted(set(other))[:3]))


def load_records(args) -> tuple[Sequence[Record] | Iterable[Record], list[str] | None]:
    """``--test_data`` as records (the first ``--limit``): a list, or a stream with ``--streaming`` on a dataset;
    and each listed record's place in the data (``file:line`` or dataset row) for messages (None for a stream)."""
    if args.streaming and is_manifest(args.test_data):
        logger.warning("--streaming applies to datasets; %s is a manifest, read whole", args.test_data)
    dataset = DatasetOptions(config=args.dataset_config, audio_column=args.audio_column,
                             text_column=args.text_column, streaming=args.streaming,
                             local_files_only=args.local_files_only)
    if args.streaming and not is_manifest(args.test_data):
        records = iter_dataset_records(args.test_data, split=args.test_split, split_flag="--test_split",
                                       options=dataset, min_duration=args.min_audio_len,
                                       max_duration=args.max_audio_len)
        return (islice(records, args.limit) if args.limit else records), None
    source = load_data(args.test_data, split=args.test_split, split_flag="--test_split", dataset=dataset,
                       min_duration=args.min_audio_len, max_duration=args.max_audio_len)
    n = min(args.limit, len(source)) if args.limit else len(source)
    locations = [source.location(i) for i in range(n)]
    if args.limit:
        return [source[i] for i in range(n)], locations
    # a dataset's records hold their audio bytes: read as they are scored; a manifest's lines are parsed once
    return (source if not isinstance(source, Manifest) else list(source)), locations


def default_report_name(model_path: str, test_data: str, metric: str) -> str:
    """``<model>_<metric>_report.json``: the model path with ``/`` as ``_`` (its last two parts when absolute), and the
    test set's name before the metric unless it is ``test`` (a dev set's report no longer overwrites the test set's)."""
    parts = [p for p in model_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]  # ./models: no "._"
    model = "_".join(parts[-2:] if os.path.isabs(model_path) else parts)
    data = os.path.splitext(os.path.basename(test_data.rstrip("/")))[0].replace("*", "")
    return f"{model}_{'' if data in ('test', '') else data + '_'}{metric}_report.json"


def _seed(seed: int) -> None:
    """Seed the samplers of the temperature fallback: CTranslate2's, and PyTorch's where it is loaded (the
    transformers backend; the ct2 backend samples in CTranslate2 and need not pay PyTorch's 1.5 s import)."""
    import ctranslate2

    ctranslate2.set_random_seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    # 1. Arguments
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    note_upstream_flags(args, UPSTREAM_FLAGS)
    # each model its own backend (--compare: a hub base against a CTranslate2 fine-tune)
    args.backends = {m: resolve_backend(args.backend, [m]) for m in (args.compare or [args.model_path])}
    args.backend = args.backends.get(args.model_path, args.backend)
    for backend in set(args.backends.values()):
        check_device_arg(parser, args.device, backend)
    if 0 < args.max_audio_len < args.min_audio_len:
        parser.error(f"--min_audio_len ({args.min_audio_len}) is above --max_audio_len ({args.max_audio_len}): "
                     "no clip could be kept")
    beam_size = args.num_beams if args.num_beams is not None else args.beam_size
    if beam_size < 1 or args.batch_size < 1:
        parser.error("--beam_size and --batch_size must be >= 1")
    try:
        options = DecodeOptions(
            language=args.language, task=args.task or "transcribe", beam_size=beam_size, batch_size=args.batch_size,
            temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if args.fallback else (0.0,),
            initial_prompt=args.initial_prompt, hotwords=args.hotwords, word_timestamps=args.word_timestamps,
            seed=args.seed,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.compare:
        if args.compare[0] == args.compare[1]:
            parser.error("--compare: give two different models (BASE FINETUNED)")
        output = args.output or "compare_report.json"
        check_output_path(parser, "--output", output, folder=False)
        try:
            return compare(args, options, output)
        except KeyboardInterrupt:  # two models decoded: the longest run, the likeliest Ctrl-C
            logger.error("interrupted: no report written")
            return 130
    output = args.output or default_report_name(args.model_path, args.test_data, args.metric)
    check_output_path(parser, "--output", output, folder=False)
    # 2. Data (a stream is read while decoding)
    try:
        records, locations = load_records(args)
    except ManifestError as e:
        logger.error("%s", e)
        return 1
    seconds = sum(r.duration for r in records) if isinstance(records, Sequence) else None
    if seconds is not None:
        logger.info("%s: %d utterances, %.2f h", args.test_data, len(records), seconds / 3600)
        if clips_unreadable(records, locations, args.test_data):
            return 1
    if not_english_references(records, options.task, args.test_data):
        return 1
    # 3. Model (ct2's auto encoder with AMX depends on how much audio there is: utils.transcribe.resolve_ct2_encoder)
    try:
        engine = load_transcriber(args.model_path, args.backend, device=args.device, dtype=args.dtype,
                                  compute_type=args.compute_type, local_files_only=args.local_files_only,
                                  ct2_encoder=args.ct2_encoder, audio_seconds=seconds)
    except (ValueError, ModelResolutionError) as e:
        logger.error("cannot load %s: %s", args.model_path, e)
        return 2
    warn_line_languages(records, options.language, args.test_data)
    options = replace(options, task=resolve_task(args.task, engine))
    if args.task is None and not_english_references(records, options.task, args.test_data):  # the model's task
        return 1
    try:
        engine.check_task(options.task, options.language, flag=task_flag(args.task))
        engine.check_language(options.language)
        for language in sorted({r.language for r in records if r.language} if isinstance(records, list) else ()):
            engine.check_language(replace(options, language=language).language, f"{args.test_data}: 'language' ")
    except ValueError as e:
        logger.error("%s (%s)", e, args.model_path)
        return 2
    options = replace(options, encoder_window_s=resolve_encoder_window(args.encoder_window_seconds, engine.device))
    # 4. Decode and score (seeded: fallback temperatures sample)
    _seed(args.seed)
    try:
        report = evaluate(engine, records, options, args.metric, args.batch_size, locations)
    except ManifestError as e:  # an invalid item of a stream
        logger.error("%s", e)
        return 1
    except KeyboardInterrupt:  # one line, not PyTorch's traceback from inside generate()
        logger.error("interrupted: no report written")
        return 130
    if not report["utterances_scored"]:
        logger.error("no clip of %s could be read (%d, named above): no report written", args.test_data,
                     report["utterances_failed"])
        return 1
    report.update(model_path=args.model_path, backend=args.backend, test_data=args.test_data,
                  language=args.language, task=options.task, initial_prompt=options.initial_prompt,
                  hotwords=options.hotwords, beam_size=beam_size,
                  encoder_window_seconds=options.encoder_window_s)
    # 5. Report
    write_json_atomic(output, report)
    rate, failed = report[args.metric], report["utterances_failed"]
    units = {"cer": "characters", "wer": "words"}.get(args.metric, "units")
    print(f"{args.metric.upper()}: {'n/a' if rate is None else f'{rate:.4f}'} ({report['errors']} errors / "
          f"{report['reference_length']} {units}, "
          f"{report['utterances_scored']} utterances{f'; {failed} unreadable, not scored' if failed else ''})")
    if report["no_speech_clips"]:
        print(f"no-speech clips (no reference text) that got text: {report['no_speech_with_text']} of "
              f"{report['no_speech_clips']}")
    if rate is None:
        logger.warning("no reference text to score against: every scored clip's sentence is empty (no-speech) or "
                       "only punctuation; the report lists what was transcribed")
    logger.info("report written to %s", output)
    return 1 if report["utterances_failed"] else 0


def compare(args, options: DecodeOptions, output: str) -> int:
    """``--compare BASE FINETUNED``: the forgetting report (utils/forgetting.py) as JSON at ``output``, markdown
    next to it and on stdout."""
    from utils.forgetting import markdown_table, model_summary, no_speech_clips, speech_metrics

    try:
        target, target_at = load_records(args)
        target = list(target)
        general, general_at = None, None
        if args.general_data == DEFAULT_GENERAL_DATA and not os.path.isfile(args.general_data):
            args.general_data = os.path.join(REPO_ROOT, DEFAULT_GENERAL_DATA)  # run from another folder
        if args.general_data is None:
            logger.info("--general_data=None: the report has no general set")
        elif args.general_data != os.path.join(REPO_ROOT, DEFAULT_GENERAL_DATA) or os.path.isfile(args.general_data):
            manifest = load_manifest(args.general_data)
            general = list(manifest)
            general_at = [manifest.location(i) for i in range(len(general))]
        else:
            logger.warning("%s not found: the report has no general set (pass --general_data)", args.general_data)
    except ManifestError as e:
        logger.error("%s", e)
        return 1
    # every clip checked before a model loads, as the single-model path does (an unreadable one was logged without
    # its line after both models had decoded, and the report said nothing of it)
    if clips_unreadable(target, target_at, args.test_data) or (
            general is not None and clips_unreadable(general, general_at, args.general_data)):
        return 1
    # both models found before either decodes: a typo in the second was reported after the first had decoded every set
    from utils.models import ct2_model_dir, resolve_model

    for model in args.compare:
        try:
            if args.backends[model] == "ct2":
                ct2_model_dir(model)
            else:
                resolve_model(model, local_files_only=args.local_files_only)
        except ModelResolutionError as e:
            logger.error("cannot use %s: %s", model, e)
            return 2
    # each model's own task (without --task) checked before any model decodes: a model fine-tuned to translate,
    # second in the list, was refused after the first had decoded both sets
    tasks = {options.task} if args.task is not None else {fine_tuned_task(m) or "transcribe" for m in args.compare}
    if any(not_english_references(target, task, args.test_data) for task in sorted(tasks)):
        return 1
    warn_line_languages(target, options.language, args.test_data)
    clips = no_speech_clips()
    rows: dict = {}
    failed = 0  # clips that could not be read while decoding (each named at its line)
    for model in args.compare:
        try:
            engine = load_transcriber(model, args.backends[model], device=args.device, dtype=args.dtype,
                                      compute_type=args.compute_type, local_files_only=args.local_files_only,
                                      ct2_encoder=args.ct2_encoder)
            # each model's own task without --task (a model fine-tuned to translate translates), as infer.py's
            options = replace(options, task=resolve_task(args.task, engine),
                              encoder_window_s=resolve_encoder_window(args.encoder_window_seconds, engine.device))
            engine.check_task(options.task, options.language, flag=task_flag(args.task))  # as the single-model path
            engine.check_language(options.language)
        except (ValueError, ModelResolutionError) as e:
            logger.error("cannot use %s: %s", model, e)
            return 2
        if args.task is None and not_english_references(target, options.task, args.test_data):
            return 1
        _seed(args.seed)
        logger.info("%s: target set %s", model, args.test_data)
        target_report = evaluate(engine, target, options, args.metric, args.batch_size, target_at)
        general_report = None
        if general is not None:  # the language of general speech is detected (even by a model fine-tuned on one)
            logger.info("%s: general set %s", model, args.general_data)
            general_report = evaluate(engine, general, replace(options, language=AUTO_LANGUAGE), args.general_metric,
                                      args.batch_size, general_at, record_language=False)
        # the model alone on the generated clips (silence, hum, clicks…): the VAD infer.py puts before it would
        # give every model a clean row, and this row is there to show what fine-tuning did to the model
        silent = engine.transcribe_batch([audio for _, audio in clips], options, vad=False)
        rows[model] = model_summary(speech_metrics(target_report["utterances"], args.metric),
                                    speech_metrics(general_report["utterances"], args.general_metric)
                                    if general_report else None, [t.text for t in silent])
        rows[model]["no_speech"]["generated"] = {name: t.text for (name, _), t in zip(clips, silent)}
        rows[model]["task"] = options.task
        # every utterance, worst first, as the single-model report lists them: which ones fine-tuning changed
        rows[model]["utterances"] = {"target": target_report["utterances"],
                                     "general": general_report["utterances"] if general_report else None}
        failed += target_report["utterances_failed"] + (general_report["utterances_failed"] if general_report else 0)
    table = markdown_table(rows, metric=args.metric, general_metric=args.general_metric,
                           target_name=os.path.basename(args.test_data),
                           general_name=os.path.basename(args.general_data) if general is not None else None)
    write_json_atomic(output, {"models": rows, "test_data": args.test_data, "general_data":
                               args.general_data if general is not None else None, "metric": args.metric,
                               "general_metric": args.general_metric, "backends": args.backends,
                               "language": args.language, "encoder_window_seconds": options.encoder_window_s})
    markdown = os.path.splitext(output)[0] + ".md"
    write_text_atomic(markdown, table)
    print(table, end="")
    logger.info("report written to %s and %s", output, markdown)
    if failed:
        logger.error("%d clip reading(s) failed while decoding (named above) and are not in the table", failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
