"""Convert a CTranslate2 Whisper folder (the faster-whisper format) into a transformers Whisper folder.

The weights are read by :mod:`utils.ct2_format` (the ``model.bin`` layout and the weight-name table are there).
The tokenizer is ``tokenizer.json`` plus the 1501 timestamp tokens OpenAI's hub tokenizers have;
OpenAI's British→American spelling table (``normalizer.json``) does not ship with CT2 models, so
``tokenizer.normalize()`` runs without that one step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from utils.audio import TIME_PRECISION
from utils.ct2_format import CT2FormatError, WhisperDims, hf_state_dict, load_ct2_config, read_whisper
from utils.io import atomic_dir

logger = logging.getLogger(__name__)

IMPORT_FORMAT_VERSION = 1  # bump when the converter's output changes; stale imported copies are rebuilt
IMPORT_INFO_FILE = "ct2_import.json"  # provenance written into every converted folder
N_TIMESTAMPS = 1501  # <|0.00|> … <|30.00|> in 20 ms steps
TORCH_DTYPES = ("float32", "float16", "bfloat16")
_TOKENIZER_FILE = "tokenizer.json"
_SPECIAL_TOKENS = {
    "eot": "<|endoftext|>",
    "sot": "<|startoftranscript|>",
    "translate": "<|translate|>",
    "transcribe": "<|transcribe|>",
    "sot_lm": "<|startoflm|>",
    "sot_prev": "<|startofprev|>",
    "no_timestamps": "<|notimestamps|>",
}
_LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}\|>$")  # <|en|>, <|haw|>, <|yue|>


# --------------------------------------------------------------------------------------------
# 1. Tokenizer, processor and generation config
# --------------------------------------------------------------------------------------------


def _token_ids(tokenizer: Any, source: Path) -> dict[str, int]:
    ids = {}
    for key, token in _SPECIAL_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        unknown = token_id is None or (key != "eot" and token_id == tokenizer.unk_token_id)
        if unknown:
            raise CT2FormatError(f"{source}: special token {token} missing; this is not a Whisper tokenizer.json")
        ids[key] = int(token_id)
    return ids


def _language_tokens(tokenizer: Any, ids: Mapping[str, int], config: Mapping[str, Any]) -> dict[str, int]:
    """``{"<|en|>": id, …}``: the ids in ``config.json``'s ``lang_ids`` (what faster-whisper uses),
    else the language tokens between ``<|startoftranscript|>`` and ``<|translate|>``."""
    lang_ids = [int(i) for i in config.get("lang_ids", [])] or list(range(ids["sot"] + 1, ids["translate"]))
    tokens = tokenizer.convert_ids_to_tokens(lang_ids)
    return {tok: i for tok, i in zip(tokens, lang_ids, strict=True) if tok and _LANGUAGE_TOKEN.match(tok)}


def build_tokenizer(tokenizer_json: str | os.PathLike, vocab_size: int, *, model_max_length: int = 448) -> Any:
    """Build a ``WhisperTokenizerFast`` from a CT2 folder's ``tokenizer.json``.

    Adds the 1501 timestamp tokens ``<|0.00|>`` … ``<|30.00|>`` after ``<|notimestamps|>`` (as
    OpenAI's tokenizers on the Hugging Face hub have them) when the file lacks them, marks the
    Whisper control and language tokens as special, and uses ``<|endoftext|>`` for bos/eos/pad/unk.

    Args:
        tokenizer_json: path of ``tokenizer.json``.
        vocab_size: rows of the model's embedding matrix; the tokenizer must end up this long.
        model_max_length: longest label sequence the decoder accepts (``max_target_positions``).

    Raises:
        CT2FormatError: not a Whisper tokenizer, or its size does not match ``vocab_size``.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    source = Path(tokenizer_json)
    eot = _SPECIAL_TOKENS["eot"]
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(source), bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot,
        model_max_length=model_max_length,
    )
    ids = _token_ids(tokenizer, source)
    first_timestamp = ids["no_timestamps"] + 1
    if tokenizer.convert_ids_to_tokens(first_timestamp) != "<|0.00|>":
        if len(tokenizer) != first_timestamp:
            raise CT2FormatError(
                f"{source}: {len(tokenizer)} tokens but <|notimestamps|> is {ids['no_timestamps']}; "
                f"cannot place the timestamp tokens after it"
            )
        tokenizer.add_tokens([
            AddedToken("<|%.2f|>" % (i * TIME_PRECISION), lstrip=False, rstrip=False, normalized=False, special=False)
            for i in range(N_TIMESTAMPS)
        ])
    if len(tokenizer) != vocab_size:
        raise CT2FormatError(
            f"{source}: tokenizer has {len(tokenizer)} tokens (with timestamps) but the model's vocabulary has "
            f"{vocab_size}; the tokenizer.json belongs to a different Whisper model"
        )
    control = tokenizer.convert_ids_to_tokens(list(range(ids["sot"], first_timestamp)))
    tokenizer.add_special_tokens({"additional_special_tokens": control})
    tokenizer.english_spelling_normalizer = {}  # no normalizer.json in CT2 folders (module docstring)
    return tokenizer


def _suppress_lists(config: Mapping[str, Any], ids: Mapping[str, int]) -> tuple[list[int], list[int]]:
    suppress = [int(t) for t in config.get("suppress_ids", [])]
    begin = [int(t) for t in config.get("suppress_ids_begin", [220, ids["eot"]])]
    return suppress, begin


def build_generation_config(
    dims: WhisperDims, tokenizer: Any, config: Mapping[str, Any], *, source: str | os.PathLike = "config.json"
) -> Any:
    """A complete Whisper ``GenerationConfig`` from a CT2 ``config.json`` and the tokenizer.

    Sets ``lang_to_id``/``task_to_id`` (multilingual models only: vocabularies of 51865+ tokens,
    OpenAI's rule), ``no_timestamps_token_id``, ``prev_sot_token_id``, ``alignment_heads``
    (``config.json``, else every head of the upper half of the decoder layers, as CTranslate2
    does), ``suppress_tokens``, ``begin_suppress_tokens``, ``decoder_start_token_id`` and
    ``max_length`` = ``max_target_positions`` (448).
    """
    from transformers import GenerationConfig

    ids = _token_ids(tokenizer, Path(source))
    suppress, begin = _suppress_lists(config, ids)
    default_heads = [[layer, head] for layer in range(dims.decoder_layers // 2, dims.decoder_layers)
                     for head in range(dims.decoder_heads)]
    heads = config.get("alignment_heads") or default_heads
    if any(not (0 <= layer < dims.decoder_layers and 0 <= head < dims.decoder_heads) for layer, head in heads):
        logger.warning("%s: alignment_heads %s do not fit %d decoder layers × %d heads; using the upper half "
                       "of the layers", source, heads, dims.decoder_layers, dims.decoder_heads)
        heads = default_heads
    multilingual = dims.vocab_size >= 51865
    values: dict[str, Any] = {
        "alignment_heads": [[int(layer), int(head)] for layer, head in heads],
        "begin_suppress_tokens": begin,
        "bos_token_id": ids["eot"],
        "decoder_start_token_id": ids["sot"],
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": dims.max_target_positions,
        "no_timestamps_token_id": ids["no_timestamps"],
        "prev_sot_token_id": ids["sot_prev"],
        "return_timestamps": False,
        "suppress_tokens": suppress,
    }
    if multilingual:
        values["lang_to_id"] = _language_tokens(tokenizer, ids, config)
        values["task_to_id"] = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return GenerationConfig(**values)


# --------------------------------------------------------------------------------------------
# 2. Conversion
# --------------------------------------------------------------------------------------------


def _whisper_config(dims: WhisperDims, **extra: Any) -> Any:
    """A transformers ``WhisperConfig`` with the architecture of ``dims`` (plus ``extra`` settings)."""
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim, decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions, **extra,
    )


def _build_model(dims: WhisperDims, tokenizer: Any, ct2_config: Mapping[str, Any], state: Mapping[str, np.ndarray],
                 dtype: str, source: Path) -> Any:
    """Instantiate ``WhisperForConditionalGeneration`` on the meta device and assign the weights."""
    import torch
    from transformers import WhisperForConditionalGeneration

    ids = _token_ids(tokenizer, source)
    suppress, begin = _suppress_lists(ct2_config, ids)
    tied = "proj_out.weight" not in state or np.array_equal(state["proj_out.weight"],
                                                            state["model.decoder.embed_tokens.weight"])
    config = _whisper_config(
        dims, pad_token_id=ids["eot"], bos_token_id=ids["eot"], eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"], suppress_tokens=suppress, begin_suppress_tokens=begin,
        tie_word_embeddings=tied, architectures=["WhisperForConditionalGeneration"],
    )
    config.dtype = dtype
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32 if v.dtype != np.float16 else np.float16))
               .to(torch_dtype) for k, v in state.items()}
    if tied:
        tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not (tied and k == "proj_out.weight")]
    if missing or result.unexpected_keys:
        raise CT2FormatError(
            f"{source}: weights do not fit transformers' Whisper (missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    if tied:
        model.tie_weights()
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise CT2FormatError(f"{source}: no weights for {on_meta[:5]}")
    model.eval()
    return model


def convert_ct2_to_hf(
    ct2_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    extra_info: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers Whisper folder.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors``, the processor
    (``preprocessor_config.json`` with the model's mel-bin count, tokenizer files) and
    ``ct2_import.json`` (provenance). The folder is built in a temp dir next to ``output_dir``
    and renamed into place, so a crash never leaves a half-written model.

    Args:
        ct2_dir: folder with ``model.bin``, ``tokenizer.json`` and (normally) ``config.json``.
        output_dir: folder to create.
        dtype: weight dtype of the saved model: float32, float16 or bfloat16.
        overwrite: replace ``output_dir`` if it exists (otherwise that is an error).
        extra_info: more provenance fields for ``ct2_import.json``.

    Returns:
        ``output_dir``.

    Raises:
        CT2FormatError: the folder is not a supported CTranslate2 Whisper model.
        FileNotFoundError: ``model.bin`` or ``tokenizer.json`` is missing.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from utils.audio import SAMPLE_RATE

    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(TORCH_DTYPES)}")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir}: already exists; pass overwrite=True (--overwrite) to replace it")
    model_bin, tokenizer_json = ct2_dir / "model.bin", ct2_dir / _TOKENIZER_FILE
    if not ct2_dir.is_dir():
        raise FileNotFoundError(f"{ct2_dir}: CTranslate2 model folder not found")
    for required in (model_bin, tokenizer_json):
        if not required.is_file():
            present = ", ".join(sorted(p.name for p in ct2_dir.iterdir())) or "none"
            raise FileNotFoundError(
                f"{ct2_dir}: {required.name} missing (files: {present}); a CTranslate2 Whisper folder needs "
                f"model.bin and tokenizer.json — copy tokenizer.json from the original model (e.g. "
                f"openai/whisper-base) if it is missing"
            )

    # 1. Read and check the weights.
    ct2_config = load_ct2_config(ct2_dir)
    weights, dims = read_whisper(model_bin, ct2_config)
    state = hf_state_dict(weights, dims, model_bin)

    # 2. Tokenizer, feature extractor and generation settings.
    tokenizer = build_tokenizer(tokenizer_json, dims.vocab_size, model_max_length=dims.max_target_positions)
    feature_extractor = WhisperFeatureExtractor(feature_size=dims.n_mels, sampling_rate=SAMPLE_RATE)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    generation_config = build_generation_config(dims, tokenizer, ct2_config, source=ct2_dir / "config.json")

    # 1. Build the model and write everything atomically.
    model = _build_model(dims, tokenizer, ct2_config, state, dtype, model_bin)
    model.generation_config = generation_config
    info = {"format_version": IMPORT_FORMAT_VERSION, "source": str(ct2_dir.resolve()), "dtype": dtype,
            "dims": dataclasses.asdict(dims), **(extra_info or {})}
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        feature_extractor.save_pretrained(tmp)  # preprocessor_config.json, read by faster-whisper and older tools
        (tmp / IMPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    logger.info("%s → %s (%s, d_model=%d, %d+%d layers, vocab %d)", ct2_dir, output_dir, dtype, dims.d_model,
                dims.encoder_layers, dims.decoder_layers, dims.vocab_size)
    return output_dir
