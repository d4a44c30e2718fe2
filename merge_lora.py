"""Merge a LoRA/AdaLoRA checkpoint into its base Whisper model.

    python merge_lora.py --lora_model=output/whisper-tiny/checkpoint-best/ --output_dir=models/
    → models/whisper-tiny-finetune  (loads with WhisperForConditionalGeneration.from_pretrained)

The base model is the one recorded in the adapter's adapter_config.json. ``--ct2`` also writes a
CTranslate2 copy (``models/whisper-tiny-finetune-ct2``) for the fast inference backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from utils.cli import add_bool, check_output_path, make_parser, optional_str, path_arg, setup_logging

logger = logging.getLogger("merge_lora")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Merge a LoRA adapter into its base Whisper model.")
    p.add_argument("--lora_model", type=path_arg, required=True, help="adapter folder (checkpoint-best / -final)")
    p.add_argument("--output_dir", type=path_arg, default="models/",
                   help="the merged model goes to <output_dir>/<base>-finetune")
    p.add_argument("--base_model", type=optional_str, default=None,
                   help="override the base model recorded in adapter_config.json")
    add_bool(p, "local_files_only", False, "never contact the model hub")
    add_bool(p, "overwrite", False, "replace an existing merged model folder")
    add_bool(p, "ct2", False, "also export a CTranslate2 model for the fast inference backend")
    p.add_argument("--quantization", type=str, default="float16", choices=["int8", "float16", "int8_float16", "float32"],
                   help="CTranslate2 weight type (with --ct2)")
    return p


def merged_dir_name(base_model: str) -> str:
    """``openai/whisper-tiny`` → ``whisper-tiny-finetune``."""
    return f"{Path(base_model.rstrip('/').rstrip(os.sep)).name}-finetune"


def merge(lora_dir: str, base_model: str, output: Path, *, local_files_only: bool, overwrite: bool) -> None:
    """Load base + adapter, merge, and save model, processor and generation config atomically."""
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

    from utils.io import atomic_dir
    from utils.lora import merge_adapter
    from utils.models import complete_model_generation_config, resolve_model

    base_dir = resolve_model(base_model, local_files_only=local_files_only)
    model = WhisperForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    merged = merge_adapter(model, lora_dir)
    processor_src = lora_dir if os.path.isfile(os.path.join(lora_dir, "tokenizer_config.json")) else base_dir
    processor = WhisperProcessor.from_pretrained(processor_src)
    gen_src = next((d for d in (lora_dir, base_dir) if os.path.isfile(os.path.join(d, "generation_config.json"))), None)
    if gen_src is not None:
        generation_config = GenerationConfig.from_pretrained(gen_src)
    else:  # a base model saved by an older transformers: its Whisper fields from the tokenizer
        generation_config = complete_model_generation_config(merged, processor.tokenizer, base_dir)
    merged.generation_config = generation_config
    merged.config.use_cache = True

    with atomic_dir(output, overwrite=overwrite) as tmp:  # a failure leaves no folder; the old model stays
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor.feature_extractor.save_pretrained(tmp)  # preprocessor_config.json, read by CTranslate2 tools
        generation_config.save_pretrained(tmp)


def ct2_dir_for(model_dir: Path) -> Path:
    """Where the CTranslate2 copy of the merged model ``model_dir`` goes: ``<model_dir>-ct2``."""
    return model_dir.parent / f"{model_dir.name}-ct2"


def export_ct2(model_dir: Path, quantization: str, *, overwrite: bool) -> Path:
    """Convert a merged transformers model to CTranslate2 (``<model_dir>-ct2``), atomically: a failed conversion
    leaves the old copy (or none)."""
    from ctranslate2.converters import TransformersConverter

    from utils.io import atomic_dir

    out = ct2_dir_for(model_dir)
    # generation_config.json: the ct2 backend reads the fine-tuned language from it
    copy = [f for f in ("tokenizer.json", "preprocessor_config.json", "generation_config.json")
            if (model_dir / f).is_file()]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        TransformersConverter(str(model_dir), copy_files=copy).convert(str(tmp), quantization=quantization,
                                                                       force=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_path(parser, "--output_dir", args.output_dir, folder=True)
    setup_logging()
    from utils.lora import check_adapter, read_adapter_config
    from utils.models import ModelResolutionError

    # 1. Which adapter (checked whole before the base model loads) and which base model
    try:
        check_adapter(args.lora_model)
        adapter_config = read_adapter_config(args.lora_model)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    base_model = args.base_model or adapter_config.get("base_model_name_or_path")
    if not base_model:
        logger.error("%s: adapter_config.json names no base model; pass --base_model", args.lora_model)
        return 1

    # 2. Where to
    output = Path(args.output_dir) / merged_dir_name(base_model)
    for folder in (output, ct2_dir_for(output)) if args.ct2 else (output,):
        if folder.exists() and not args.overwrite:  # both checked before merging (the -ct2 one was found after)
            logger.error("%s already exists; pass --overwrite to replace it", folder)
            return 1
    stale = ct2_dir_for(output)
    if args.overwrite and not args.ct2 and stale.exists():
        logger.warning("%s is the CTranslate2 copy of the model being replaced: it will not match the new merge; "
                       "export it again with --ct2=True (or remove it)", stale)

    try:
        # 3. Merge and save
        try:
            merge(args.lora_model, base_model, output, local_files_only=args.local_files_only,
                  overwrite=args.overwrite)
        except ModelResolutionError as e:
            logger.error("base model %s: %s", base_model, e)
            return 1
        except ValueError as e:  # the adapter does not fit the base model
            logger.error("base model %s: %s", base_model, e)
            return 1
        logger.info("merged model saved to %s", output)
        print(output)

        # 4. Optional CTranslate2 export
        if args.ct2:
            try:
                ct2_dir = export_ct2(output, args.quantization, overwrite=args.overwrite)
            except (KeyboardInterrupt, Exception) as e:  # the merge is published: an old CTranslate2 copy is stale
                what = "was interrupted" if isinstance(e, KeyboardInterrupt) else f"failed ({e})"
                stale = ct2_dir_for(output)
                logger.error("the CTranslate2 export of %s %s%s; run the same command again%s", output, what,
                             f": {stale} is still the previous model's copy, not this merge's" if stale.exists()
                             else "", "" if args.overwrite else " with --overwrite=True (the merge is published)")
                return 130 if isinstance(e, KeyboardInterrupt) else 1
            logger.info("CTranslate2 model (%s) saved to %s", args.quantization, ct2_dir)
            print(ct2_dir)
    except KeyboardInterrupt:  # each folder is published whole or not at all
        logger.error("interrupted: no half-written folder is left; run the same command again")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
