"""Read CTranslate2 Whisper ``model.bin`` files.

The binary reader, the architecture, de-quantisation and the CT2 → transformers weight names. Used by the converter
(:mod:`utils.ct2_import`), the packaged-model cache (:mod:`utils.models`), the PyTorch encoder loader
(:mod:`utils.audio_encoder`) and the onnxruntime encoder (:mod:`utils.onnx_encoder`).


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
de-quantised to float, which is approximate by nature (an int8 engine can keep them: ``keep_int8``).

Model sizes are read from the weight shapes; the number of attention heads from the
``encoder/num_heads``/``decoder/num_heads`` scalars CT2 stores, else from ``config.json``
(``num_heads``), else ``d_model // 64`` (every OpenAI Whisper size uses 64-dimensional heads).
The mel-bin count (80, or 128 for large-v3) comes from ``encoder/conv1/weight``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CT2_BINARY_VERSION = 6  # the model.bin layout this reader understands (CTranslate2 >= 3)
HEAD_DIM = 64  # Whisper attention head size, used when a model does not record its head count

# CTranslate2 dtype ids (ctranslate2/specs/model_spec.py order); bfloat16 has no numpy type.
_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_NUMPY_DTYPES = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2"}
_GELU = 3  # common_spec.Activation.GELU


class CT2FormatError(ValueError):
    """A CTranslate2 model file or folder is malformed or not a Whisper model this toolkit supports."""


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


@dataclasses.dataclass(frozen=True)
class Int8Weight:
    """A CTranslate2 int8 matrix kept as stored: ``values`` (out, in) int8, ``scale`` (out,) float32, one per output
    row; the weight is ``values / scale[:, None]``."""

    values: np.ndarray
    scale: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def split(self, parts: int) -> list[Int8Weight]:
        """Row blocks (a fused projection's parts), each with its rows' scales."""
        return [Int8Weight(v, s) for v, s in zip(np.split(self.values, parts), np.split(self.scale, parts))]

    def dequantized(self) -> np.ndarray:
        return self.values.astype(np.float32) / self.scale[:, None]


def dequantize(variables: Mapping[str, np.ndarray], aliases: Mapping[str, str], source: Path, *,
               prefix: str = "", warn: bool = True, keep_int8: bool = False) -> dict[str, np.ndarray | Int8Weight]:
    """Float arrays for every weight tensor whose name starts with ``prefix`` (all by default), aliases included;
    ``*_scale`` variables are folded in. ``warn``: say so as a warning when int8/int16 weights were de-quantised
    (a conversion keeps their error for good); False logs it at INFO (an encoder built at every load). ``keep_int8``:
    int8 matrices with one scale per row stay as they are stored (:class:`Int8Weight`), for an int8 engine.

    CTranslate2 also uses aliases to store identical tensors once, and an aliased weight (e.g.
    ``decoder/projection/weight``) uses its target's scale when it has none of its own.
    """
    merged = {**variables, **{alias: variables[target] for alias, target in aliases.items()}}
    out: dict[str, np.ndarray] = {}
    quantized = 0
    for name, value in merged.items():
        if name.endswith("_scale") or value.ndim == 0 or not name.startswith(prefix):
            continue
        scale = merged.get(f"{name}_scale")
        if scale is None and name in aliases:
            scale = merged.get(f"{aliases[name]}_scale")
        if scale is not None and keep_int8 and value.dtype == np.int8 and value.ndim == 2 and np.ndim(scale) == 1:
            out[name] = Int8Weight(value, np.asarray(scale, dtype=np.float32))
        elif scale is not None:
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
        logger.log(logging.WARNING if warn else logging.INFO,
                   "%s: %d int8/int16 weights de-quantised to float; they keep the quantisation error",
                   source, quantized)
    return out


def hf_state_dict(weights: Mapping[str, np.ndarray], dims: WhisperDims, source: Path, *,
                  stacks: tuple[str, ...] = ("encoder", "decoder")) -> dict[str, np.ndarray]:
    """Map CT2 weight names to ``WhisperForConditionalGeneration`` state-dict keys (arrays unchanged, an
    :class:`Int8Weight` split with its scales), for the encoder and/or decoder (``stacks``)."""
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
        return value.split(parts) if isinstance(value, Int8Weight) else np.split(value, parts, axis=0)

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

    n_layers_of = {"encoder": dims.encoder_layers, "decoder": dims.decoder_layers}
    for stack in stacks:
        for i in range(n_layers_of[stack]):
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
    if "encoder" in stacks:
        linear("model.encoder.conv1", "encoder/conv1")
        linear("model.encoder.conv2", "encoder/conv2")
    if "decoder" in stacks:
        sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
        if "decoder/projection/weight" in weights:
            sd["proj_out.weight"] = get("decoder/projection/weight")
    mapped = tuple(f"{stack}/" for stack in stacks)
    unused = sorted(n for n in set(weights) - used - {"decoder/projection/weight"} if n.startswith(mapped))
    if unused:
        raise CT2FormatError(f"{source}: unexpected variables this converter does not know: {', '.join(unused[:5])}")
    return sd


def load_ct2_config(ct2_dir: Path) -> dict[str, Any]:
    """A CT2 folder's ``config.json`` (suppress lists, alignment heads, …); {} with a warning when missing."""
    path = ct2_dir / "config.json"
    if not path.is_file():
        logger.warning("%s: config.json missing; using default suppress tokens and alignment heads", ct2_dir)
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CT2FormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


def read_whisper(model_bin: Path, ct2_config: Mapping[str, Any], *, prefix: str = "", warn: bool = True,
                 keep_int8: bool = False) -> tuple[dict[str, np.ndarray | Int8Weight], WhisperDims]:
    """Read a CT2 Whisper ``model.bin``: float weights (de-quantised, aliases resolved; ``warn``, ``keep_int8``: see
    :func:`dequantize`) of the variables whose names start with ``prefix`` (``"encoder/"``: only the encoder is
    de-quantised), and its architecture."""
    spec_name, variables, aliases = read_ct2_model(model_bin)
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"{model_bin}: spec is {spec_name!r}, not 'WhisperSpec'; this is not a Whisper model")
    _check_supported(variables, model_bin)
    weights = dequantize(variables, aliases, model_bin, prefix=prefix, warn=warn, keep_int8=keep_int8)
    dims = infer_whisper_dims({**variables, **{a: variables[t] for a, t in aliases.items()}}, ct2_config,
                              source=model_bin)  # shapes only: quantised arrays have the same shapes
    return weights, dims
