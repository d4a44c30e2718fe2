"""Fine-tune Whisper with LoRA / AdaLoRA on a jsonlines manifest.

    python finetune.py --base_model=openai/whisper-tiny --output_dir=output/
    torchrun --nproc_per_node=2 finetune.py --base_model=openai/whisper-tiny --output_dir=output/
    accelerate launch --config_file configs/accelerate_deepspeed_zero2.yaml finetune.py --base_model=...

Writes ``<output_dir>/<model name>/checkpoint-<step>``, ``checkpoint-best`` (lowest eval CER/WER),
``checkpoint-final``, TensorBoard logs in ``runs/`` and ``training_curves.png``.

LoRA goes on every encoder and decoder layer by default. ``--lora_encoder_layers=N`` keeps the encoder's
adapters to its top N layers (0 = decoder only): the layers below run without gradients and their output is
computed once per clip and cached, so epochs after the first cost only the top layers and the decoder (faster,
but the lower layers then cannot learn new acoustics). On CPUs with AMX the frozen base weights are kept in bf16
(adapters, gradients and optimizer in fp32); elsewhere CPU training runs in fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from utils.cli import (add_audio_length_args, add_bool, add_dataset_args, add_upstream_flags, bool_or_auto,
                       check_output_path, finite_float, int_at_least, make_parser, note_upstream_flags, optional_path,
                       optional_str, path_arg, quiet_logging, seed_int, setup_logging)
from utils.data import ManifestError, missing_manifest_message
from utils.hf_data import is_manifest
from utils.lora import ADALORA_MIN_STEPS, DEFAULT_TARGET_MODULES
from utils.text import METRICS
from utils.device import choose_precision

logger = logging.getLogger("finetune")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Fine-tune Whisper with LoRA/AdaLoRA (single process, torchrun or accelerate launch).")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", type=path_arg, default="dataset/train.json",
                   help="training manifest (jsonlines), or a Hugging Face dataset: save_to_disk folder, audiofolder, "
                        "parquet file/glob/folder, hub name")
    g.add_argument("--test_data", type=path_arg, default="dataset/test.json",
                   help="eval manifest (jsonlines) or a Hugging Face dataset, as --train_data")
    add_dataset_args(g, splits={"train_split": "train", "test_split": "test"}, streaming=True)
    g.add_argument("--shuffle_buffer", type=int, default=1000,
                   help="--streaming: items held to shuffle the stream (more = better mixed, more memory)")
    add_audio_length_args(g, min_default=0.5, max_help=", <= 30: one window")
    g.add_argument("--language", type=optional_str, default="Chinese",
                   help="language of items without their own 'language'; None = multilingual / auto")
    g.add_argument("--task", type=str, default="transcribe", choices=["transcribe", "translate"], help="task")
    add_bool(g, "timestamps", False, "train timestamp tokens from 'sentences' (items without them still used)")
    g.add_argument("--prompt_prob", type=finite_float, default=0.0,
                   help="share of items trained with a previous-text prompt (the preceding sentence of the same "
                        "recording, else hotwords from the item's text; no loss on it), so --initial_prompt and "
                        "--hotwords keep working after fine-tuning; 0.2-0.5 recommended when you use them")
    g.add_argument("--pack_audio", type=bool_or_auto, default=None, metavar="auto|True|False",
                   help="train on 30 s windows packed with several clips (their texts joined): the encoder costs the "
                        "same for 3 s or 30 s, so short clips train several times faster; the batch still counts "
                        "clips (a window holds at most a quarter more than --per_device_train_batch_size). "
                        "auto (the default) = on when training on CPU (not with --streaming, --prompt_prob or a batch "
                        "of 1)")
    g.add_argument("--augment_config_path", type=optional_str, default=None,
                   help="augmentation JSON (see configs/augmentation.json); None = no augmentation")
    g.add_argument("--replay_data", type=optional_str, default=None,
                   help="manifest of general speech mixed into every epoch to limit forgetting (other languages, "
                        "numbers, punctuation); see evaluation.py --compare")
    g.add_argument("--replay_ratio", type=finite_float, default=0.2,
                   help="share of each epoch taken from --replay_data")
    g.add_argument("--num_workers", type=int, default=1, help="DataLoader worker processes")
    g.add_argument("--max_eval_samples", type=int, default=0, help="evaluate on the first N test items (0 = all)")

    g = p.add_argument_group("model")
    g.add_argument("--base_model", type=str, default="openai/whisper-tiny", help="hub id or local Whisper folder")
    add_bool(g, "local_files_only", False, "never contact the model hub")
    g.add_argument("--cache_dir", type=optional_str, default=None, help="Hugging Face hub cache folder")
    add_bool(g, "use_8bit", False, "load the base model in 8-bit (bitsandbytes, CUDA only)")
    add_bool(g, "use_4bit", False, "load the base model in 4-bit NF4 (bitsandbytes, CUDA only)")
    add_bool(g, "gradient_checkpointing", False, "recompute activations to save GPU memory (slower)")
    add_bool(g, "use_compile", False, "torch.compile the model (PyTorch 2)")

    g = p.add_argument_group("adapter")
    add_bool(g, "use_adalora", False, "AdaLoRA (adaptive ranks) instead of LoRA")
    g.add_argument("--lora_r", type=int, default=32, help="LoRA rank (AdaLoRA: final average rank is r/8 .. init r/2)")
    g.add_argument("--lora_alpha", type=int, default=64, help="LoRA scaling alpha")
    g.add_argument("--lora_dropout", type=finite_float, default=0.05, help="dropout on the adapter input")
    g.add_argument("--target_modules", type=str, default=",".join(DEFAULT_TARGET_MODULES),
                   help="comma-separated module names; prefix decoder./encoder. to limit a name to one side "
                        "(decoder-only adapters freeze the encoder: its outputs are computed once and cached)")
    g.add_argument("--lora_encoder_layers", type=layers_or_all, default=None, metavar="N|all",
                   help="adapters in only the top N encoder layers (0 = decoder only; default all): the layers "
                        "below run without gradients and their output is computed once per clip and cached, which "
                        "is 2x faster on a CPU with N=1 but learns new acoustics far less (README)")
    g.add_argument("--encoder_cache_gb", type=finite_float, default=4.0,
                   help="memory for the cached output of the frozen encoder layers (0 = no cache)")

    g = p.add_argument_group("training")
    g.add_argument("--output_dir", type=path_arg, default="output/", help="runs go to <output_dir>/<model name>/")
    g.add_argument("--num_train_epochs", type=finite_float, default=3.0, help="epochs (ignored when --max_steps > 0)")
    g.add_argument("--max_steps", type=int, default=0, help="optimizer steps; > 0 overrides --num_train_epochs")
    g.add_argument("--per_device_train_batch_size", type=int, default=8, help="batch per process")
    g.add_argument("--per_device_eval_batch_size", type=int, default=8, help="eval batch per process")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--learning_rate", type=finite_float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--weight_decay", type=finite_float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup_steps", type=int, default=50, help="linear warmup steps")
    g.add_argument("--max_grad_norm", type=finite_float, default=1.0,
                   help="clip gradients to this norm (0 = no clipping)")
    g.add_argument("--logging_steps", type=int, default=10, help="log the loss every N steps")
    g.add_argument("--eval_steps", type=int, default=100, help="evaluate CER/WER every N steps (0 = only at the end)")
    g.add_argument("--save_steps", type=int, default=100, help="save checkpoint-<step> every N steps (0 = never)")
    g.add_argument("--save_total_limit", type=int, default=3,
                   help="keep the newest N checkpoint-<step> folders of this run (0 = all)")
    g.add_argument("--metric", type=str, default="cer", choices=METRICS,
                   help="selects checkpoint-best: cer, wer, or mer (mixed: a Chinese character or an English word is "
                        "one unit, for code-switching data)")
    add_bool(g, "eval_at_start", False, "also evaluate the base model at step 0 (baseline CER/WER)")
    g.add_argument("--generation_max_length", type=int, default=0,
                   help="max new tokens per clip when evaluating; 0 = sized by the clip's duration like inference "
                        "(20 tokens/s, room for dense Mandarin), within the decoder's 448")
    g.add_argument("--precision", type=str, default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 autocast on GPUs that support it, else fp16 on CUDA; on a CPU bf16 base "
                        "weights with fp32 adapters where AMX makes bf16 fast, else fp32")
    add_bool(g, "fp16", False, "ask for fp16 mixed precision (honoured on CUDA only)")
    g.add_argument("--resume_from_checkpoint", type=optional_path, default=None,
                   help="checkpoint-<step> folder, or auto = the newest one in the run folder")
    g.add_argument("--seed", type=seed_int, default=42, help="random seed (data order, augmentation, init)")
    add_bool(g, "push_to_hub", False, "accepted for compatibility; upload the merged model yourself")
    add_upstream_flags(p, UPSTREAM_FLAGS)
    return p


UPSTREAM_FLAGS = {"hub_model_id": "ignored: nothing is uploaded (merge with merge_lora.py and upload the folder)"}


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot work, with the fix."""
    import torch

    if args.use_8bit and args.use_4bit:
        parser.error("--use_8bit and --use_4bit exclude each other")
    if (args.use_8bit or args.use_4bit) and not torch.cuda.is_available():
        parser.error("--use_8bit/--use_4bit need a CUDA GPU (bitsandbytes quantized training); on CPU "
                     "run with --use_8bit=False (LoRA on the full-precision model)")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        parser.error("give --max_steps > 0 or --num_train_epochs > 0")
    if not 0 < args.max_audio_len <= 30:
        parser.error("--max_audio_len must be in (0, 30] seconds: Whisper sees 30 s windows")
    if args.use_adalora and args.lora_r < 2:
        parser.error("--lora_r must be >= 2 with --use_adalora")
    if args.use_adalora and 0 < args.max_steps < ADALORA_MIN_STEPS:
        parser.error(f"--use_adalora needs at least {ADALORA_MIN_STEPS} optimizer steps to prune its ranks, got "
                     f"--max_steps={args.max_steps}; raise it, or train plain LoRA")
    ranges = {  # flag: (allowed, how the message says it)
        "learning_rate": (lambda v: v > 0, "> 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "warmup_steps": (lambda v: v >= 0, ">= 0"),
        "max_steps": (lambda v: v >= 0, ">= 0 (0 = use --num_train_epochs)"),
        "num_train_epochs": (lambda v: v >= 0, ">= 0"),
        "max_grad_norm": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
        "generation_max_length": (lambda v: 0 <= v <= 444, "in [0, 444] (0 = by clip duration)"),
        "lora_r": (lambda v: v >= 1, ">= 1"),
        "lora_alpha": (lambda v: v > 0, "> 0"),
        "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "prompt_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "replay_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
        "encoder_cache_gb": (lambda v: v >= 0, ">= 0 (0 = no cache)"),
        "min_audio_len": (lambda v: v >= 0, ">= 0 seconds"),
        "num_workers": (lambda v: v >= 0, ">= 0"),
        "max_eval_samples": (lambda v: v >= 0, ">= 0 (0 = all)"),
        "eval_steps": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
        "save_steps": (lambda v: v >= 0, ">= 0 (0 = never)"),
        "save_total_limit": (lambda v: v >= 0, ">= 0"),
        **{name: (lambda v: v >= 1, ">= 1") for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                                                          "gradient_accumulation_steps", "logging_steps")},
    }
    for name, (allowed, text) in ranges.items():
        value = getattr(args, name)
        if not allowed(value):
            parser.error(f"--{name} must be {text}, got {value}")
    if args.min_audio_len >= args.max_audio_len:
        parser.error(f"--min_audio_len ({args.min_audio_len}) must be below --max_audio_len ({args.max_audio_len})")
    # one stat: every torchrun rank probes this folder at once (check_output_path makes and removes it), and an
    # exists-then-isdir pair could see it made and then gone, i.e. "a file"
    if os.path.isfile(args.output_dir):
        parser.error(f"--output_dir {args.output_dir} is a file; give a folder (runs go to <output_dir>/<model name>/)")
    check_output_path(parser, "--output_dir", args.output_dir, folder=True)
    for flag, path in (("--train_data", args.train_data), ("--test_data", args.test_data),
                       ("--replay_data", args.replay_data)):
        if path is not None and is_manifest(path) and not os.path.isfile(path):
            parser.error(f"{flag} {missing_manifest_message(path)}")
    if args.streaming:
        if is_manifest(args.train_data):
            parser.error(f"--streaming reads a Hugging Face dataset; {args.train_data} is a manifest (read it without "
                         "--streaming)")
        if args.max_steps <= 0:
            parser.error("--streaming: a stream has no length, so give the run's length with --max_steps")
        if args.replay_data or args.pack_audio:
            parser.error("--streaming cannot be combined with --replay_data or --pack_audio")
        if args.shuffle_buffer < 1:
            parser.error(f"--shuffle_buffer must be >= 1, got {args.shuffle_buffer}")
    if args.push_to_hub:
        logger.warning("--push_to_hub is not supported here; merge with merge_lora.py and upload the folder")
    note_upstream_flags(args, UPSTREAM_FLAGS)
    if args.task == "translate" and (args.language or "").strip().lower() in ("en", "english"):
        logger.warning("--task=translate with --language=%s: the language names the speech, and English speech "
                       "translated to English is a transcript; give the spoken language (or None), or use "
                       "--task=transcribe", args.language)


def quantization_config(use_8bit: bool, use_4bit: bool, mixed_precision: str):
    """bitsandbytes settings for ``--use_8bit``/``--use_4bit`` (None for neither).

    4-bit layers compute in the run's autocast dtype: fp16 on GPUs without bf16 (T4, V100, GTX 10xx/16xx),
    where bf16 compute is emulated (slow) or fails, bf16 where the run uses bf16.
    """
    import torch
    from transformers import BitsAndBytesConfig

    if use_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if use_4bit:
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    return None


def load_model(model_dir: str, *, use_8bit: bool, use_4bit: bool, device_index: int | None,
               gradient_checkpointing: bool, dtype: str = "float32", mixed_precision: str = "no"):
    """Load the base Whisper (``dtype`` weights; optionally 8/4-bit on CUDA) with SDPA attention."""
    import torch
    from transformers import WhisperForConditionalGeneration

    kwargs = {"attn_implementation": "sdpa", "dtype": getattr(torch, dtype)}
    if use_8bit or use_4bit:
        kwargs["quantization_config"] = quantization_config(use_8bit, use_4bit, mixed_precision)
        kwargs["device_map"] = {"": device_index or 0}  # one whole copy per process, never "auto" under DDP
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    if use_8bit or use_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def worker_error_message(error: BaseException) -> str:
    """The original message of an exception, also when a DataLoader worker re-raised it with its traceback
    ("Caught X in DataLoader worker process 0. Original Traceback ... module.X: message")."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return str(error)


STREAM_TEXT_CHECKED = 200  # --task=translate on a stream: the first items whose text must be English

_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def peer_stopped(error: BaseException) -> bool:
    """Whether ``error`` is a collective operation failing because another process of the run has gone (gloo:
    "Connection closed by peer"; NCCL: an aborted communicator): that process's own error is the one to show."""
    import torch.distributed

    return (isinstance(error, getattr(torch.distributed, "DistBackendError", ()))
            or any(marker in str(error) for marker in _PEER_GONE))


class FinetuneError(RuntimeError):
    """A step of the run cannot go on; the message names the file or flag and the fix."""


class FinetuneInterrupted(FinetuneError):
    """Ctrl-C (SIGINT): the run stops; the message says where it was and how to resume."""


@dataclasses.dataclass
class TrainingData:
    """The datasets of a run and what was read to make them."""

    processor: Any
    train: Any  # SpeechDataset
    eval_set: Any  # utils.trainer.EvalSet
    augmenter: Any  # AugmentConfig or None
    timestamps: bool  # timestamp tokens are trained (--timestamps and items that have them)


def setup_devices(args: argparse.Namespace) -> tuple[Any, Any]:
    """The accelerator (torchrun / accelerate launch settings come from the environment) and the precision."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(args.precision, args.fp16, device_type)
    accelerator = Accelerator(mixed_precision=precision.mixed_precision, cpu=device_type == "cpu")
    if not accelerator.is_local_main_process:  # warnings once (the main process's); errors from every process
        quiet_logging(logging.ERROR)
    logger.info("device %s, %d process(es), precision: %s", accelerator.device, accelerator.num_processes,
                precision.describe())
    if accelerator.num_processes == 1 and "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ \
            and "WORLD_SIZE" not in os.environ:  # accelerate launch --num_processes=N's simple launcher: one process
        logger.warning("accelerate launch was asked for several processes but started one (with --cpu, or without "
                       "GPUs, it launches a single process): for N processes use `accelerate launch --multi_gpu "
                       "--num_processes=N` or `torchrun --nproc_per_node=N`")
    set_seed(args.seed, device_specific=True)  # seed + rank: each process draws its own dropout masks
    return accelerator, precision


def find_checkpoint(args: argparse.Namespace, accelerator: Any, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (``--resume_from_checkpoint``, ``auto`` (any case) = the one saved last), checked
    whole before anything slow; a save that a kill interrupted is cleaned up first."""
    from utils.lora import check_resumed_adapter
    from utils.trainer import check_checkpoint, latest_checkpoint, recover_interrupted_saves

    if accelerator.is_main_process:
        recover_interrupted_saves(run_dir)
    accelerator.wait_for_everyone()
    resume = args.resume_from_checkpoint
    if resume is not None and resume.lower() == "auto":
        resume = latest_checkpoint(run_dir)
        if resume is None:
            logger.info("no checkpoint in %s to resume from; starting fresh", run_dir)
    if resume is not None:
        lora = lora_options(args, None)
        wanted = ({"peft_type": "ADALORA", "init_r": lora.adalora_init_r} if lora.use_adalora
                  else {"peft_type": "LORA", "r": lora.r})
        try:
            check_checkpoint(resume, adalora=args.use_adalora)
            check_resumed_adapter(resume, {**wanted, "lora_alpha": lora.alpha})
        except (FileNotFoundError, ValueError) as e:
            raise FinetuneError(f"cannot resume: {e}") from e
    return None if resume is None else Path(resume)


def load_data(args: argparse.Namespace, model_dir: str, language: str | None, *, rank: int = 0,
              world_size: int = 1) -> TrainingData:
    """Processor, manifests or datasets (validated whole; a stream item by item, this ``rank``'s share),
    augmentation config, the train dataset and the eval set."""
    from transformers import WhisperProcessor

    from utils.augment import AugmentConfigError, load_augment_config
    from utils.audio import WINDOW_S
    from utils.data import Manifest, check_clips, check_model_language, check_translation_references, log_clip_warnings
    from utils.hf_data import DatasetOptions, DatasetStream
    from utils.hf_data import load_data as load_source
    from utils.train_data import LabelTokens, SpeechDataset
    from utils.trainer import EvalSet

    processor = WhisperProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    tokens = LabelTokens.from_tokenizer(tokenizer)
    if language is not None and tokens.multilingual:
        try:
            check_model_language(language, tokens.languages, "--language", "choose a language it has")
        except ManifestError as e:
            raise FinetuneError(f"{args.base_model}: {e}") from e

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    augmenter = None
    lengths = dict(min_duration=args.min_audio_len, max_duration=args.max_audio_len, encode=encode,
                   timestamps=args.timestamps, languages=tokens.languages if tokens.multilingual else None,
                   dataset=DatasetOptions(config=args.dataset_config, audio_column=args.audio_column,
                                          text_column=args.text_column, local_files_only=args.local_files_only))
    try:
        if args.streaming:  # read as it comes, in the DataLoader; checked item by item
            train_manifest = DatasetStream(args.train_data, split=args.train_split, split_flag="--train_split",
                                           options=dataclasses.replace(lengths["dataset"], streaming=True),
                                           min_duration=args.min_audio_len, max_duration=args.max_audio_len)
        else:
            train_manifest = load_source(args.train_data, split=args.train_split, split_flag="--train_split",
                                         **lengths)
        test_manifest = load_source(args.test_data, split=args.test_split, split_flag="--test_split", **lengths)
        for source in (train_manifest, test_manifest):  # before the model loads, not hours into training
            if not isinstance(source, Manifest):
                continue
            report = check_clips(source, map(source.location, range(len(source))), max_seconds=WINDOW_S)
            problems = report.problems
            log_clip_warnings(report, str(source.path))
            if problems:
                more = f"\n... and {len(problems) - 5} more" if len(problems) > 5 else ""
                raise ManifestError("\n".join(problems[:5]) + more)
        if args.augment_config_path:
            augmenter = load_augment_config(args.augment_config_path)
    except (ManifestError, AugmentConfigError) as e:
        raise FinetuneError(str(e)) from e
    dataset_kwargs = dict(language=language, task=args.task, timestamps=args.timestamps)
    waveform_augmenter = augmenter if augmenter is not None and augmenter.has_waveform_steps else None
    try:
        if args.streaming:
            from utils.train_data import StreamingSpeechDataset

            train = StreamingSpeechDataset(train_manifest, processor.feature_extractor, tokenizer, rank=rank,
                                           world_size=world_size, shuffle_buffer=args.shuffle_buffer, seed=args.seed,
                                           augmenter=waveform_augmenter, prompt_prob=args.prompt_prob,
                                           **dataset_kwargs)
        else:
            train = SpeechDataset(train_manifest, processor.feature_extractor, tokenizer, seed=args.seed,
                                  augmenter=waveform_augmenter, prompt_prob=args.prompt_prob, **dataset_kwargs)
    except ValueError as e:
        raise FinetuneError(f"{args.base_model}: {e}") from e
    eval_set = EvalSet.from_dataset(SpeechDataset(test_manifest, processor.feature_extractor, tokenizer,
                                                  **dataset_kwargs), limit=args.max_eval_samples)
    if args.task == "translate":  # English text to learn and score
        try:
            check_translation_references(eval_set.references, f"--test_data {args.test_data}")
            if isinstance(train_manifest, DatasetStream):  # a stream: the text of its first items
                check_translation_references(train_manifest.first_sentences(STREAM_TEXT_CHECKED),
                                             f"--train_data {args.train_data} (its first {STREAM_TEXT_CHECKED} items)")
            else:
                check_translation_references(train_manifest.sentences(), f"--train_data {args.train_data}")
        except ManifestError as e:
            raise FinetuneError(str(e)) from e
    if isinstance(train_manifest, Manifest) and not any(train_manifest.record(i).sentence.strip()
                                                        for i in range(len(train_manifest))):
        logger.warning("every training clip of %s is a no-speech clip (empty 'sentence'): the model learns to say "
                       "nothing at all; give --train_data clips with speech", args.train_data)
    if not any(ref.strip() for ref in eval_set.references):
        logger.warning("every eval clip of %s is a no-speech clip (empty 'sentence'): the eval %s is 0 while the model "
                       "says nothing on them and inf once it says anything, and checkpoint-best is chosen on that; "
                       "give --test_data clips with speech", args.test_data, args.metric.upper())
    if args.prompt_prob > 0 and not args.pack_audio and not args.streaming:
        logger.info("previous-text prompts on %.0f%% of the items: %d of %d have a preceding sentence in the same "
                    "recording, the others get hotwords (whole words of their own text, half the time mixed with "
                    "another item's)", 100 * args.prompt_prob, len(train.previous), len(train))
    if args.pack_audio:
        from utils.train_data import PackedSpeechDataset, window_clip_limit

        if args.prompt_prob > 0:
            logger.warning("--pack_audio: packed windows carry no previous-text prompt (--prompt_prob applies to none)")
        if args.per_device_train_batch_size == 1:
            logger.warning("--pack_audio with --per_device_train_batch_size=1: a window holds at most about a batch "
                           "of clips, so each holds one clip and packing saves nothing; a larger batch (with less "
                           "--gradient_accumulation_steps) packs")
        packed = PackedSpeechDataset(train, max_clips=window_clip_limit(args.per_device_train_batch_size))
        if getattr(args, "pack_audio_auto", False) and len(packed) < PACK_MIN_WINDOWS:
            # every step would train on the same few windows, whose texts in order the model learns (4 espeak clips
            # in one window, 12 steps: each clip alone was read as all four, CER 0.57 -> 1.52; unpacked 0.57 -> 0.00)
            logger.info("--pack_audio=auto: off (the %d training clips fill only %d windows; a set this small trains "
                        "as fast unpacked)", len(train), len(packed))
            args.pack_audio = False
        else:
            train = packed
    if args.replay_data:
        from utils.train_data import ReplayMix

        try:
            replay_manifest = load_source(args.replay_data, split=args.train_split, split_flag="--train_split",
                                          **lengths)
            train = ReplayMix(train, SpeechDataset(replay_manifest, processor.feature_extractor, tokenizer,
                                                   seed=args.seed, augmenter=waveform_augmenter, **dataset_kwargs),
                              ratio=args.replay_ratio, seed=args.seed)
        except (ManifestError, ValueError) as e:
            raise FinetuneError(f"--replay_data: {e}") from e
        logger.info("replay: %d items of %s (%d) mixed into every epoch (%.0f%% of it)", train.per_epoch,
                    args.replay_data, len(replay_manifest), 100 * args.replay_ratio)
    if not train.tokens.multilingual:
        logger.info("English-only model: labels start like its inference prompt, <|startoftranscript|> "
                    "<|notimestamps|>, with no language or task token")
        if language not in (None, "en"):
            logger.warning("%s is an English-only model, and --language=%s: it has no token for that language and "
                           "was not trained on it; it learns it from scratch (slowly, and with a byte-level "
                           "vocabulary). For %s data start from a multilingual model (e.g. openai/whisper-base)",
                           args.base_model, args.language, args.language)
    if args.streaming:
        logger.info("train: %s streamed (shuffle buffer %d, rank %d of %d), eval: %d clips", args.train_data,
                    args.shuffle_buffer, rank, world_size, len(eval_set))
    else:
        packed = f" in {len(train)} windows" if args.pack_audio else ""
        clips = sum(train.clip_counts()) if args.pack_audio else len(train)
        logger.info("train: %d clips%s (%.2f h), eval: %d clips", clips, packed, train_manifest.total_hours(),
                    len(eval_set))
    if args.pack_audio:  # the batch counts clips: each batch is the windows holding about that many
        from utils.train_data import ClipBatches

        train = ClipBatches(train, train.clip_counts(), batch_clips=args.per_device_train_batch_size,
                            seed=args.seed)
    return TrainingData(processor, train, eval_set, augmenter,
                        trains_timestamps(args, [train_manifest, replay_manifest] if args.replay_data else
                                          [train_manifest]))


def trains_timestamps(args: argparse.Namespace, sources: list[Any]) -> bool:
    """Whether the run trains timestamp tokens: --timestamps with items that have 'sentences', or packed windows
    (one timestamped segment per clip); warns when --timestamps=True has nothing to train them on."""
    if not args.timestamps:
        return False
    if (args.pack_audio and not args.streaming) or any(getattr(s, "timestamped", 0) for s in sources):
        return True
    logger.warning("--timestamps=True, but no training item has 'sentences' (timestamped segments) and "
                   "--pack_audio is off: every label is <|notimestamps|> text; the model is marked as trained "
                   "without timestamps")
    return False


def train_options(args: argparse.Namespace, language: str | None, data: TrainingData) -> Any:
    """The trainer's options from the flags; the output of the encoder's frozen bottom layers (all of them when
    no adapter is in the encoder) is cached when no augmentation or quantisation changes it between epochs."""
    from utils.trainer import TrainOptions

    augmenter = data.augmenter
    augments_encoder = augmenter is not None and (augmenter.has_waveform_steps or bool(augmenter.spec_augment))
    cache_encoder = not augments_encoder and not (args.use_8bit or args.use_4bit)
    return TrainOptions(
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        max_steps=args.max_steps, num_train_epochs=args.num_train_epochs, logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        metric=args.metric, language=language, task=args.task, generation_max_length=args.generation_max_length,
        num_workers=args.num_workers, seed=args.seed, use_adalora=args.use_adalora, eval_at_start=args.eval_at_start,
        cache_encoder=cache_encoder, encoder_cache_gb=args.encoder_cache_gb,
    )


def layers_or_all(value: str) -> int | None:
    """``all`` (None) or a number of layers >= 0."""
    if str(value).strip().lower() == "all":
        return None
    return int_at_least(value, 0, "'all' or a number of layers")


def target_modules(args: argparse.Namespace) -> tuple[str, ...]:
    """``--target_modules`` as a tuple of module names."""
    return tuple(t.strip() for t in args.target_modules.split(",") if t.strip())


def lora_options(args: argparse.Namespace, total_steps: int | None) -> Any:
    """The adapter settings (utils.lora.LoraOptions) of the flags, for a run of ``total_steps`` optimizer steps."""
    from utils.lora import LoraOptions

    return LoraOptions(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                       target_modules=target_modules(args), encoder_layers=args.lora_encoder_layers,
                       use_adalora=args.use_adalora, adalora_init_r=max(2, args.lora_r // 2),
                       adalora_target_r=max(1, args.lora_r // 8), total_step=total_steps)


def build_model(args: argparse.Namespace, model_dir: str, accelerator: Any, precision: Any, data: TrainingData,
                language: str | None, total_steps: int) -> tuple[Any, Any]:
    """The base model (quantised, checkpointed, in the run's dtype) with its LoRA/AdaLoRA adapter, and the
    generation config evaluation uses."""
    import torch

    from utils.augment import apply_spec_augment
    from utils.lora import build_adapter
    from utils.models import complete_model_generation_config

    cuda = accelerator.device.type == "cuda"
    model = load_model(model_dir, use_8bit=args.use_8bit, use_4bit=args.use_4bit,
                       device_index=accelerator.local_process_index if cuda else None,
                       gradient_checkpointing=args.gradient_checkpointing,
                       dtype="float32" if args.use_8bit or args.use_4bit else precision.base_dtype,
                       mixed_precision=precision.mixed_precision)
    if data.augmenter is not None:
        apply_spec_augment(model.config, data.augmenter.spec_augment)
    generation_config = complete_model_generation_config(model, data.processor.tokenizer, model_dir)
    generation_config.language = language
    generation_config.task = args.task
    generation_config.forced_decoder_ids = None
    # read back by inference: a model trained without timestamp tokens says so when timestamps are asked of it
    generation_config.finetune_timestamps = data.timestamps
    if not args.timestamps:
        logger.warning("training without timestamp tokens (--timestamps=False): the fine-tuned model may stop "
                       "producing segment timestamps on long audio (inference will warn when they are asked for); "
                       "with 'sentences' in the data, --timestamps=True keeps them")
    lora = lora_options(args, total_steps)
    # what merge_lora.py loads: a local folder by its absolute path (a relative one resolves from here only)
    base_name = os.path.abspath(args.base_model) if os.path.isdir(args.base_model) else args.base_model
    try:
        model = build_adapter(model, lora, base_model_name=base_name)
    except ValueError as e:
        raise FinetuneError(f"adapter: {e}") from e
    if args.use_compile:
        model = torch.compile(model)
    return model, generation_config


def _resume_hint(run_dir: Path) -> str:
    """Where a failed run goes on from: its last complete checkpoint, if it saved one."""
    from utils.trainer import latest_checkpoint

    last = latest_checkpoint(run_dir)
    return "" if last is None else f" ({last} resumes with --resume_from_checkpoint=auto)"


def train(args: argparse.Namespace, accelerator: Any, data: TrainingData, model: Any, generation_config: Any,
          options: Any, run_dir: Path, resume: Path | None) -> Any:
    """Train (resuming ``resume`` if given); returns the trainer's result."""
    import torch

    from utils.audio import AudioLoadError
    from utils.collator import WhisperCollator
    from utils.lora import check_resumed_adapter
    from utils.trainer import Trainer

    tokenizer = data.processor.tokenizer
    collator = WhisperCollator(decoder_start_token_id=model.config.decoder_start_token_id,
                               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id,
                               prompt_start_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"))
    try:
        trainer = Trainer(model, accelerator=accelerator, processor=data.processor, train_dataset=data.train,
                          eval_set=data.eval_set, collator=collator, options=options, run_dir=run_dir,
                          generation_config=generation_config)
    except ValueError as e:  # settings the trainer cannot run with (a stream without --max_steps, DeepSpeed's)
        raise FinetuneError(str(e)) from e
    if resume is not None:
        try:
            # the modules (--lora_encoder_layers counts the model's layers: known once it is built)
            peft_model = getattr(model, "_orig_mod", model)  # torch.compile'd or not
            check_resumed_adapter(resume, {"target_modules": peft_model.peft_config["default"].target_modules},
                                  [name for name, _ in peft_model.get_base_model().named_modules()])
            trainer.resume(resume)
        except (FileNotFoundError, ValueError) as e:
            raise FinetuneError(f"cannot resume: {e}") from e
    try:
        return trainer.train()
    except KeyboardInterrupt:
        from utils.trainer import latest_checkpoint

        step, last = trainer.state.global_step, latest_checkpoint(run_dir)
        if last is None:
            raise FinetuneInterrupted(f"interrupted at step {step}, before any checkpoint was saved (every "
                                      f"--save_steps={args.save_steps}): a new run starts from the beginning") from None
        raise FinetuneInterrupted(f"interrupted at step {step}: {last} resumes with "
                                  "--resume_from_checkpoint=auto") from None
    except AudioLoadError as e:  # from a DataLoader worker, the message carries the worker's traceback
        raise FinetuneError(f"{worker_error_message(e)}; fix or remove that line{_resume_hint(run_dir)}") from e
    except ManifestError as e:  # a streamed dataset's row, checked as it arrives (in a DataLoader worker)
        raise FinetuneError(f"{worker_error_message(e)}{_resume_hint(run_dir)}") from e
    except torch.cuda.OutOfMemoryError as e:
        raise FinetuneError(
            f"out of GPU memory at --per_device_train_batch_size={args.per_device_train_batch_size}: try a "
            "smaller batch with --gradient_accumulation_steps to keep its size, --gradient_checkpointing=True, "
            f"or --use_8bit=True{_resume_hint(run_dir)}"
        ) from e
    except RuntimeError as e:  # torchrun: this process's collective failed because another one stopped on an error
        if trainer.world_size > 1 and peer_stopped(e):
            raise FinetuneError(f"another process of this run stopped (its error is above): this one stops too"
                                f"{_resume_hint(run_dir)}") from e
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    check_args(parser, args)
    from utils.languages import optional_language_code

    try:
        language = optional_language_code(args.language)
    except ValueError as e:
        parser.error(f"--language: {e}")
    try:
        return run(args, language)
    except FinetuneInterrupted as e:
        logger.error("%s", e)
        return 130
    except KeyboardInterrupt:  # before training started: nothing written to resume from
        logger.error("interrupted before training started")
        return 130
    except FinetuneError as e:
        logger.error("%s", e)
        return 1


PACK_MIN_WINDOWS = 8  # --pack_audio=auto packs a training set that fills at least this many windows


def pack_audio_choice(choice: bool | None, *, device_type: str, streaming: bool, prompt_prob: float,
                      batch_size: int) -> bool:
    """``--pack_audio``: the flag's value, or for auto (None) on when training on CPU, where the encoder's fixed
    30 s window is most of a step's time, unless the data is streamed, trained with prompts (packs carry none) or
    the per-device batch is one clip (a window then holds one clip: nothing to pack)."""
    if choice is not None:
        return choice
    why = ("--streaming" if streaming else "--prompt_prob > 0" if prompt_prob > 0 else
           f"training on {device_type}" if device_type != "cpu" else
           "--per_device_train_batch_size=1: a window would hold one clip" if batch_size <= 1 else None)
    logger.info("--pack_audio=auto: %s", "on (CPU training: up to about a batch of clips per 30 s window, batches "
                "still count clips)" if why is None else f"off ({why})")
    return why is None


def run(args: argparse.Namespace, language: str | None) -> int:
    """The run, step by step; a step that cannot go on raises FinetuneError."""
    from utils.models import ModelResolutionError, resolve_model
    from utils.trainer import total_training_steps

    # 1. Devices and precision
    accelerator, precision = setup_devices(args)
    # 2. The checkpoint to resume from, checked before anything slow
    run_dir = Path(args.output_dir) / Path(args.base_model.rstrip("/\\")).name
    resume = find_checkpoint(args, accelerator, run_dir)
    args.pack_audio_auto = args.pack_audio is None
    args.pack_audio = pack_audio_choice(args.pack_audio, device_type=accelerator.device.type,
                                        streaming=args.streaming, prompt_prob=args.prompt_prob,
                                        batch_size=args.per_device_train_batch_size)
    # 3. Model folder and data
    try:
        model_dir = resolve_model(args.base_model, local_files_only=args.local_files_only, cache_dir=args.cache_dir)
    except ModelResolutionError as e:
        raise FinetuneError(str(e)) from e
    data = load_data(args, model_dir, language, rank=accelerator.process_index, world_size=accelerator.num_processes)
    # 4. Model and adapter
    options = train_options(args, language, data)
    total_steps = args.max_steps if args.streaming else total_training_steps(data.train, options,
                                                                            accelerator.num_processes)
    model, generation_config = build_model(args, model_dir, accelerator, precision, data, language, total_steps)
    # 5. Train
    result = train(args, accelerator, data, model, generation_config, options, run_dir, resume)
    # 6. Report
    if accelerator.is_main_process:
        state = result.state
        ran = "" if result.steps == state.global_step else f" ({result.steps} in this run)"
        logger.info("done: %d steps%s in %.1f s (%.2f samples/s); best %s %.4f at step %s; final adapter in %s",
                    state.global_step, ran, result.seconds, result.samples_per_second, args.metric,
                    state.best_metric if state.best_metric is not None else float("nan"), state.best_step,
                    os.path.join(run_dir, "checkpoint-final"))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
