"""Whisper's audio encoder as an ONNX graph on onnxruntime: the ct2 backend's ``--ct2_encoder=onnx``.

Two precisions, from one CTranslate2 folder: int8 (for an int8 compute type, the CPU default) and float32. int8 is
CTranslate2's own scheme (weights with one scale per output channel, each frame of a projection's input with its own
scale, integer sums in int32) on onnxruntime's integer kernels: on a CPU with VNNI (AVX-512-VNNI, AVX-VNNI) a 30 s
window of whisper-base took about half CTranslate2 int8's time on our 2-core AMD EPYC (Zen 5), with an error from
float32 of the same size (``tools/bench_infer.py --encoder_batches``; README), so ``--ct2_encoder=auto`` picks it
there. Without VNNI onnxruntime's int8 × uint8 kernels add product pairs in int16, which can saturate: the weights
are then stored as uint8 (exact, slower; not measured against CTranslate2 on such a CPU, so auto keeps CTranslate2).
float32: on an AVX2-only CPU CTranslate2's int8 bought the encoder nothing over float32, and onnxruntime's float32
with its fused attention kernel encoded a 30 s window at least as fast (whisper-base, 2 threads, AMD EPYC AVX2:
0.64–1.05 s vs 0.74–1.05 s for CTranslate2 int8 over several runs), but on real Mandarin said several times its
float32 numbers read worse (README). The decoder stays in CTranslate2 (``generate`` takes the encoder output).

The graph is written here (:mod:`utils.onnx_proto`) from a CTranslate2 folder's encoder weights
(:mod:`utils.ct2_format`; int8 ones used as stored for int8, de-quantised for float32; float16 cast once by
onnxruntime): no PyTorch, no export step, nothing cached on disk (whisper-base: 0.2-0.4 s to build and load). Input:
log-mel features (batch, n_mels, frames), any even frame count up to 3000; output (batch, frames / 2, d_model), what
``ctranslate2.models.Whisper.encode`` returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from utils import onnx_proto
from utils.ct2_format import Int8Weight
from utils.device import cpu_has_vnni

logger = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization
IR_VERSION = 8  # onnxruntime ≥ 1.10 reads it
LAYER_NORM_EPS = 1e-5
MAX_MODEL_BYTES = 1_800_000_000  # one serialized ONNX model must stay under protobuf's 2 GB


class OnnxEncoderError(ValueError):
    """The encoder cannot be built as one ONNX graph (too large, or weights missing)."""


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A projection's weight as stored, (out, in), → int8 (in, out) and float32 scales (out,): symmetric, one scale
    per output channel (``weight ≈ q.T * scale``). A CTranslate2 int8 weight de-quantised comes back as its own integers
    (its scales are per output row too)."""
    w = np.asarray(weight, dtype=np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.rint(w * (1.0 / scale)[:, None]).astype(np.int8)  # |w / scale| <= 127 by construction
    return np.ascontiguousarray(q.T), scale


def encoder_graph(state: Mapping[str, np.ndarray | Int8Weight], *, heads: int, fused_attention: bool = True,
                  int8: bool = False, signed_weights: bool = True) -> bytes:
    """The serialized ONNX model (``ModelProto``) of Whisper's encoder with these weights.

    ``state``: transformers ``WhisperEncoder`` state-dict names without the ``model.encoder.`` prefix (``conv1.weight``,
    ``layers.0.self_attn.q_proj.weight`` …; the key projection has no bias), float arrays, or for a projection's weight
    a CTranslate2 :class:`~utils.ct2_format.Int8Weight` (used as it is with ``int8``). Two GELU convolutions (the
    second with stride 2), sinusoidal positions cut to the frame count, pre-norm layers with ``heads``-head
    self-attention, a final layer norm; GELU is the exact (erf) one, softmax in float32, as in Whisper. Between the
    layers the frames are rows of one (batch × frames, d_model) matrix, so every projection is one ``Gemm`` on the
    weight as stored (out, in); query, key and value are one projection. ``fused_attention``: the attention is
    onnxruntime's ``com.microsoft.MultiHeadAttention`` kernel (6–8 % faster on a 30 s window than the same steps in
    standard operators, which False writes: MatMul, Softmax, MatMul; the same numbers to 1e-4). ``int8``: the
    projections (query/key/value, output, both feed-forward ones) multiply integers, as CTranslate2's int8 does: the
    weight with one scale per output channel (:func:`quantize_columns`), each row (frame) of the input with its own
    scale (max |x| / 127), computed per call; ``MatMulInteger`` sums in int32, then both scales and the bias are
    applied in float32 (convolutions, norms, attention and softmax stay float32). The input's integers are stored as
    uint8 (zero point 128); ``signed_weights``: the weights as int8 (onnxruntime's u8s8 kernels: exact with VNNI,
    :func:`utils.device.cpu_has_vnni`; without it they add product pairs in int16, which can saturate), else as uint8
    with zero point 128 (u8u8: exact on any CPU, slower).

    Raises:
        OnnxEncoderError: a weight is missing, or d_model is not a multiple of ``heads``.
    """
    nodes: list[onnx_proto.Message] = []
    inits: list[onnx_proto.Message] = []
    count = [0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(onnx_proto.tensor(name, value))
        if value.dtype == np.float16:  # computed in float32: onnxruntime converts it once, when the session starts
            nodes.append(onnx_proto.node("Cast", [name], [f"{name}.f32"], f"{name}.f32", to=onnx_proto.FLOAT))
            return f"{name}.f32"
        return name

    def node(op: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs: Any) -> Any:
        count[0] += 1
        names = [f"{op.lower()}_{count[0]}_{i}" for i in range(outputs)]
        nodes.append(onnx_proto.node(op, inputs, names, f"{op.lower()}_{count[0]}", domain, **attrs))
        return names[0] if outputs == 1 else names

    def weight(name: str) -> Any:  # float16 stays float16 (half the bytes to serialise and parse)
        if name not in state:
            raise OnnxEncoderError(f"encoder weight {name!r} missing")
        value = state[name]
        if isinstance(value, Int8Weight):  # kept as stored for the int8 projections
            return value if int8 else value.dequantized()
        value = np.asarray(value)
        return value if value.dtype == np.float16 else value.astype(np.float32, copy=False)

    def gelu(x: str) -> str:  # 0.5 x (1 + erf(x / √2)); onnxruntime fuses it into one Gelu kernel
        half = node("Mul", [x, "half"])
        return node("Mul", [half, node("Add", [node("Erf", [node("Div", [x, "sqrt2"])]), "one"])])

    def project(x: str, name: str, w: np.ndarray | Int8Weight, b: np.ndarray) -> str:  # x (rows, in) → (rows, out)
        if not int8:
            return node("Gemm", [x, const(f"{name}.weight", w), const(f"{name}.bias", b)], transB=1)
        if isinstance(w, Int8Weight):  # CTranslate2's own integers and scales
            q, col_scale = np.ascontiguousarray(w.values.T), (1.0 / w.scale).astype(np.float32)
        else:
            q, col_scale = quantize_columns(w)
        if not signed_weights:
            q = (q.astype(np.int16) + 128).astype(np.uint8)
        inits.append(onnx_proto.tensor(f"{name}.weight_q", q))
        row_scale = node("Max", [node("Div", [node("ReduceMax", [node("Abs", [x])], axes=[1], keepdims=1),
                                              "q_max"]), "q_tiny"])
        xq = node("Cast", [node("Add", [node("Round", [node("Div", [x, row_scale])]), "q_zero_f"])],
                  to=onnx_proto.UINT8)
        zero_points = ["q_zero"] if signed_weights else ["q_zero", "q_zero"]
        acc = node("Cast", [node("MatMulInteger", [xq, f"{name}.weight_q", *zero_points])], to=onnx_proto.FLOAT)
        return node("Add", [node("Mul", [node("Mul", [acc, row_scale]), const(f"{name}.scale", col_scale)]),
                            const(f"{name}.bias", b.astype(np.float32))])

    def linear(x: str, prefix: str) -> str:
        return project(x, prefix, weight(f"{prefix}.weight"), weight(f"{prefix}.bias"))

    def norm(x: str, prefix: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.weight", weight(f"{prefix}.weight")),
                                           const(f"{prefix}.bias", weight(f"{prefix}.bias"))],
                    axis=-1, epsilon=LAYER_NORM_EPS)

    d_model, n_mels = weight("conv1.weight").shape[:2]
    if d_model % heads:
        raise OnnxEncoderError(f"d_model {d_model} is not divisible by {heads} heads")
    head_dim = d_model // heads
    const("half", np.array(0.5, np.float32))
    if int8:
        const("q_max", np.array(127.0, np.float32))
        const("q_tiny", np.array(1e-12, np.float32))  # an all-zero row: any scale will do, its integers are 0
        const("q_zero_f", np.array(128.0, np.float32))
        inits.append(onnx_proto.tensor("q_zero", np.array(128, np.uint8)))
    const("one", np.array(1.0, np.float32))
    const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    if not fused_attention:  # the fused kernel scales by head_dim ** -0.5 itself
        const("scale", np.array(head_dim ** -0.5, np.float32))
    const("rows_shape", np.array([-1, d_model], np.int64))
    const("zero", np.array([0], np.int64))
    const("one_i", np.array([1], np.int64))
    const("two_i", np.array([2], np.int64))
    const("minus_one", np.array([-1], np.int64))
    const("heads_dims", np.array([heads, head_dim], np.int64))
    const("model_dim", np.array([d_model], np.int64))

    conv1 = node("Conv", ["features", const("conv1.weight", weight("conv1.weight")),
                          const("conv1.bias", weight("conv1.bias"))], kernel_shape=[3], pads=[1, 1])
    conv2 = node("Conv", [gelu(conv1), const("conv2.weight", weight("conv2.weight")),
                          const("conv2.bias", weight("conv2.bias"))], kernel_shape=[3], pads=[1, 1], strides=[2])
    x = node("Transpose", [gelu(conv2)], perm=[0, 2, 1])  # (batch, frames / 2, d_model)
    frames = node("Slice", [node("Shape", [x]), "one_i", "two_i"])  # [frames / 2]
    heads_shape = node("Concat", ["minus_one", frames, "heads_dims"], axis=0)  # (batch, frames, heads, head_dim)
    out_shape = node("Concat", ["minus_one", frames, "model_dim"], axis=0)
    positions = node("Slice", [const("embed_positions", weight("embed_positions.weight")), "zero", frames, "zero"])
    x = node("Reshape", [node("Add", [x, positions]), "rows_shape"])

    def attention(x: str, p: str) -> str:
        parts = [weight(f"{p}.{name}_proj.weight") for name in "qkv"]
        if all(isinstance(w, Int8Weight) for w in parts):
            qkv_w = Int8Weight(np.concatenate([w.values for w in parts]), np.concatenate([w.scale for w in parts]))
        else:
            parts = [w.dequantized() if isinstance(w, Int8Weight) else w for w in parts]
            qkv_w = np.concatenate([w.astype(parts[0].dtype) for w in parts])
        q_b = weight(f"{p}.q_proj.bias")
        qkv_b = np.concatenate([q_b, np.zeros(d_model, q_b.dtype),  # the key projection has no bias
                                weight(f"{p}.v_proj.bias").astype(q_b.dtype)])
        qkv = project(x, f"{p}.qkv", qkv_w, qkv_b)
        q, k, v = node("Split", [qkv], outputs=3, axis=1)
        if fused_attention:
            q, k, v = (node("Reshape", [y, out_shape]) for y in (q, k, v))
            mixed = node("MultiHeadAttention", [q, k, v], domain="com.microsoft", num_heads=heads)
            return linear(node("Reshape", [mixed, "rows_shape"]), f"{p}.out_proj")

        def heads_first(y: str, perm: list[int]) -> str:
            return node("Transpose", [node("Reshape", [y, heads_shape])], perm=perm)

        scores = node("MatMul", [heads_first(node("Mul", [q, "scale"]), [0, 2, 1, 3]),
                                 heads_first(k, [0, 2, 3, 1])])  # (batch, heads, frames, frames)
        mixed = node("MatMul", [node("Softmax", [scores], axis=-1), heads_first(v, [0, 2, 1, 3])])
        rows = node("Reshape", [node("Transpose", [mixed], perm=[0, 2, 1, 3]), "rows_shape"])
        return linear(rows, f"{p}.out_proj")

    layers = 0
    while f"layers.{layers}.fc1.weight" in state:
        p = f"layers.{layers}"
        x = node("Add", [x, attention(norm(x, f"{p}.self_attn_layer_norm"), f"{p}.self_attn")])
        x = node("Add", [x, linear(gelu(linear(norm(x, f"{p}.final_layer_norm"), f"{p}.fc1")), f"{p}.fc2")])
        layers += 1
    if not layers:
        raise OnnxEncoderError("no encoder layers in the weights")
    nodes.append(onnx_proto.node("Reshape", [norm(x, "layer_norm"), out_shape], ["encoded"], "encoded"))
    return onnx_proto.model(
        nodes, inits,
        [onnx_proto.value_info("features", onnx_proto.FLOAT, ["batch", int(n_mels), "frames"])],
        [onnx_proto.value_info("encoded", onnx_proto.FLOAT, ["batch", "positions", int(d_model)])],
        graph_name="whisper_encoder", opset=OPSET, ir_version=IR_VERSION, producer="whisper-finetune",
        domains={"com.microsoft": 1} if fused_attention else None)


class OnnxEncoder:
    """Whisper's encoder on onnxruntime's CPU provider: ``encoder(features)`` → encoder output.

    ``features``: float32 (batch, n_mels, frames); returns float32 (batch, frames / 2, d_model).
    """

    def __init__(self, model: bytes, *, threads: int = 0) -> None:
        import onnxruntime as ort

        size = len(model)
        if size > MAX_MODEL_BYTES:
            raise OnnxEncoderError(f"the encoder's graph is {size / 1e9:.1f} GB, more than one ONNX graph holds; "
                                   "use --ct2_encoder=ct2")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle worker threads must not spin: CTranslate2's decoder runs right after on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 3 or x.shape[-1] % 2:
            raise ValueError(f"features must be (batch, n_mels, even frames), got {x.shape}")
        return self.session.run(["encoded"], {"features": x})[0]


def load_onnx_encoder(ct2_dir: str | os.PathLike, *, threads: int = 0, int8: bool = False) -> OnnxEncoder:
    """The encoder of a CTranslate2 Whisper folder on onnxruntime: float32 (int8/float16 weights de-quantised), or,
    with ``int8``, its projections in int8 (:func:`encoder_graph`; int8 weights where the CPU has VNNI).

    Raises:
        OnnxEncoderError: the encoder is too large for one ONNX graph.
        utils.ct2_format.CT2FormatError: the folder is not a supported CTranslate2 Whisper model.
    """
    from utils.ct2_format import hf_state_dict, load_ct2_config, read_whisper

    model_bin = Path(ct2_dir) / "model.bin"
    weights, dims = read_whisper(model_bin, load_ct2_config(Path(ct2_dir)), prefix="encoder/", warn=False,
                                 keep_int8=int8)
    prefix = "model.encoder."
    state = {k[len(prefix):]: v for k, v in hf_state_dict(weights, dims, model_bin, stacks=("encoder",)).items()}
    sizes = {k: v.values.size if isinstance(v, Int8Weight) else np.asarray(v).size for k, v in state.items()}
    params = sum(sizes.values())
    graph_bytes = sum(n * (1 if int8 and k.startswith("layers.") and len(state[k].shape) == 2 else 4)
                      for k, n in sizes.items())  # float32, but the int8 projections' weights
    if graph_bytes > MAX_MODEL_BYTES:
        raise OnnxEncoderError(f"{model_bin}: the encoder's graph would be {graph_bytes / 1e9:.1f} GB "
                               f"({'int8' if int8 else 'float32'}), more than one ONNX graph holds; "
                               "use --ct2_encoder=ct2")
    signed = cpu_has_vnni()
    logger.debug("%s: encoder of %d layers, %.1f M parameters, on onnxruntime %s", model_bin, dims.encoder_layers,
                 params / 1e6, ("int8 (u8s8)" if signed else "int8 (u8u8)") if int8 else "float32")
    return OnnxEncoder(encoder_graph(state, heads=dims.encoder_heads, int8=int8, signed_weights=signed),
                       threads=threads)
