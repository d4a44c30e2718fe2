"""Classify the sentiment of texts or transcripts as positive / negative / neutral, with a score.

    python sentiment_analysis.py --text "这家餐厅的菜太好吃了，服务也很热情"
    python sentiment_analysis.py --input transcript.json --output_format json --output sentiment.json
    python sentiment_analysis.py --input lines.txt --model uer/roberta-base-finetuned-jd-binary-chinese

The score is positivity in [0, 1]; texts within 0.5 ± --neutral_margin are neutral. The default
model works offline (a lexicon with negation and contrast rules for Chinese, VADER for English); see utils/sentiment.py for why and
for how a Hugging Face model's labels are read. Exit status: 0 done, 2 bad arguments or input
file (nothing written), 1 model cannot be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from utils.cli import (add_bool, add_hidden_alias, check_device_arg, check_output_path, finite_float, make_parser,
                       optional_path, optional_str, output_format_arg, path_arg, setup_logging)
from utils.io import write_json_atomic, write_text_atomic
from utils.sentiment import (
    DEFAULT_NEUTRAL_MARGIN,
    INPUT_SUFFIXES,
    SentimentInput,
    STDIN,
    SentimentInputError,
    SentimentModelError,
    TextItem,
    analyze_sentiment,
    format_report,
    load_sentiment_inputs,
    load_sentiment_model,
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("Classify texts or a transcript as positive / negative / neutral.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=str, action="append",
                        help="a text to classify (repeat the flag for several)")
    source.add_argument("--input", type=path_arg,
                        help=f"file of texts ({', '.join(INPUT_SUFFIXES)}), or - for standard input: .txt = one "
                             "text per line; .json = infer.py's transcript ({text, segments}) or a jsonlines "
                             "manifest ('sentence' per line); .srt/.vtt = one text per cue")
    parser.add_argument("--model_path", type=optional_str, default=None,
                        help="None/auto = offline (lexicon for Chinese, VADER for English), 'lexicon', 'snownlp', 'vader', "
                             "or a Hugging Face text-classification model folder or hub id")
    parser.add_argument("--language", type=str, default="auto", choices=["auto", "zh", "en"],
                        help="offline backend for every text; auto = per text (contains CJK → Chinese)")
    parser.add_argument("--neutral_margin", type=finite_float, default=DEFAULT_NEUTRAL_MARGIN,
                        help="scores within 0.5 ± this are neutral, in [0, 0.5)")
    parser.add_argument("--output_format", type=output_format_arg, default=None, choices=["txt", "json"],
                        help="txt = one line per text; json = {model, results, overall}; default: json for an "
                             "--output ending in .json, else txt")
    parser.add_argument("--output", type=optional_path, default=None,
                        help="write the output to this file (atomically) instead of stdout (- = stdout)")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per model call (Hugging Face models)")
    parser.add_argument("--device", type=str, default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps")
    add_bool(parser, "local_files_only", False, "never contact the model hub")
    add_hidden_alias(parser, "--model", "--model_path")
    return parser


def read_inputs(args: argparse.Namespace) -> SentimentInput:
    """The texts from ``--text`` or ``--input``. Raises SentimentInputError for a bad file."""
    if args.text is not None:
        return SentimentInput([TextItem(t) for t in args.text])
    return load_sentiment_inputs(args.input)


def render(report: dict, output_format: str) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) if output_format == "json" else format_report(report)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.neutral_margin < 0.5:
        parser.error(f"--neutral_margin must be in [0, 0.5), got {args.neutral_margin}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.text is not None and not any(t.strip() for t in args.text):
        parser.error("--text is empty, nothing to classify")
    if args.text is not None and (empty := [k for k, t in enumerate(args.text, 1) if not t.strip()]):
        parser.error(f"--text number {', '.join(map(str, empty))} of {len(args.text)} is empty (an empty text would "
                     "count as neutral); leave it out")
    if args.output == STDIN:  # as --input=-: standard output (it wrote a file named "-")
        args.output = None
    check_output_path(parser, "--output", args.output, folder=False)
    if args.output_format is None:  # --output=x.json held the text report (no JSON reader could load it)
        args.output_format = "json" if args.output is not None and args.output.lower().endswith(".json") else "txt"
    if (args.output is not None and args.input not in (None, STDIN) and os.path.exists(args.input)
            and os.path.exists(args.output) and os.path.samefile(args.input, args.output)):
        parser.error(f"--output {args.output} is the --input file: the report would replace the texts; write it "
                     "elsewhere")
    check_device_arg(parser, args.device, "transformers")
    setup_logging()
    try:
        return run(args)
    except KeyboardInterrupt:  # one line, not a traceback from inside the model; nothing half-written
        logger.error("interrupted: nothing written")
        return 130
    except BrokenPipeError:  # sentiment_analysis.py ... | head -1: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


def run(args: argparse.Namespace) -> int:
    """The steps of :func:`main` after its checks."""

    # 1. Read the texts (before loading anything, so a bad file fails fast and writes nothing)
    try:
        inputs = read_inputs(args)
    except SentimentInputError as e:
        logger.error("%s", e)
        return 2

    # 2. Load the model
    try:
        model = load_sentiment_model(args.model_path, language=None if args.language == "auto" else args.language,
                                     neutral_margin=args.neutral_margin, device=args.device,
                                     batch_size=args.batch_size, local_files_only=args.local_files_only)
    except SentimentModelError as e:
        logger.error("%s", e)
        return 1

    # 3. Classify every text in one batched call
    report = analyze_sentiment(model, inputs)

    # 4. Print or write the report
    if args.output is None:
        print(render(report, args.output_format))
    elif args.output_format == "json":
        write_json_atomic(args.output, report)
        logger.info("wrote %d results to %s", len(report["results"]), args.output)
    else:
        write_text_atomic(args.output, render(report, "txt") + "\n")
        logger.info("wrote %d results to %s", len(report["results"]), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
