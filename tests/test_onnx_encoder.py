"""The ct2 backend's onnxruntime encoder: the protobuf it writes, its numbers, and when ``--ct2_encoder=auto``
picks it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from utils import device as device_mod
from utils import onnx_encoder, onnx_proto
from utils.audio import load_audio
from utils.audio_encoder import AudioEncoder
from utils.models import packaged_ct2_dir
from utils.onnx_encoder import OnnxEncoder, OnnxEncoderError, encoder_graph, load_onnx_encoder
from utils.transcribe import resolve_ct2_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_MELS, D_MODEL, HEADS, FFN, LAYERS, POSITIONS = 80, 64, 4, 128, 2, 1500


def _random_encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    encoder = AudioEncoder(n_mels=N_MELS, d_model=D_MODEL, layers=LAYERS, heads=HEADS, ffn_dim=FFN,
                           max_positions=POSITIONS).eval()
    with torch.no_grad():  # LayerNorm starts at 1/0: give every weight a value so a swapped one shows
        for p in encoder.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return encoder


def _state(encoder: AudioEncoder, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(dtype) for k, v in encoder.state_dict().items()}


@pytest.fixture(scope="module")
def base_ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return packaged_ct2_dir("openai/whisper-base", cache_dir=tmp_path_factory.mktemp("ct2cache"))


def test_the_written_model_is_valid_onnx() -> None:
    """onnx's own parser and checker accept the bytes utils.onnx_proto writes (int, float and ints attributes,
    float32 / float16 / int64 tensors, named and fixed dimensions)."""
    onnx = pytest.importorskip("onnx")  # requirements-dev.txt installs it; the toolkit itself does not need it

    # standard operators only (onnx knows no schema of onnxruntime's contrib MultiHeadAttention)
    model = onnx.load_from_string(encoder_graph(_state(_random_encoder(), np.float16), heads=HEADS,
                                                fused_attention=False))
    onnx.checker.check_model(model, full_check=True)
    fused = onnx.load_from_string(encoder_graph(_state(_random_encoder()), heads=HEADS))
    attention = [n for n in fused.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(attention) == LAYERS and {n.domain for n in attention} == {"com.microsoft"}
    assert {o.domain: o.version for o in fused.opset_import} == {"": onnx_encoder.OPSET, "com.microsoft": 1}
    assert model.opset_import[0].version == onnx_encoder.OPSET
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", N_MELS, "frames"]
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert onnx.helper.get_attribute_value(softmax.attribute[0]) == -1
    conv2 = [n for n in model.graph.node if n.op_type == "Conv"][1]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv2.attribute}["strides"] == [2]
    weight = next(t for t in model.graph.initializer if t.name == "layers.1.fc2.weight")
    assert weight.data_type == onnx_proto.FLOAT16 and list(weight.dims) == [D_MODEL, FFN]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("frames", [3000, 1000])
def test_the_graph_computes_what_the_pytorch_encoder_computes(dtype: type, frames: int, fused: bool) -> None:
    """Same weights, same features: the onnxruntime graph (fused attention kernel or standard operators) and
    utils.audio_encoder's PyTorch encoder (float32) agree frame by frame, for a 30 s window and a shorter one
    (streaming's windows), batch of two."""
    encoder = _random_encoder()
    state = _state(encoder, dtype)
    with torch.no_grad():  # the PyTorch side gets the same (rounded) weights
        encoder.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})
    feats = np.random.default_rng(1).standard_normal((2, N_MELS, frames)).astype(np.float32)
    ours = OnnxEncoder(encoder_graph(state, heads=HEADS, fused_attention=fused), threads=1)(feats)
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(feats)).numpy()
    assert ours.shape == reference.shape == (2, frames // 2, D_MODEL)
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=1e-4)


def test_bad_weights_and_shapes_are_refused() -> None:
    state = _state(_random_encoder())
    with pytest.raises(OnnxEncoderError, match="divisible"):
        encoder_graph(state, heads=3)
    del state["layers.1.fc2.bias"]
    with pytest.raises(OnnxEncoderError, match=r"layers\.1\.fc2\.bias"):
        encoder_graph(state, heads=HEADS)
    encoder = OnnxEncoder(encoder_graph(_state(_random_encoder()), heads=HEADS), threads=1)
    with pytest.raises(ValueError, match="even frames"):
        encoder(np.zeros((1, N_MELS, 999), np.float32))
    with pytest.raises(TypeError, match="int32"):
        onnx_proto.tensor("x", np.zeros(3, np.int32))


def test_an_encoder_too_large_for_one_graph_names_the_way_out(base_ct2_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_encoder, "MAX_MODEL_BYTES", 10_000_000)
    with pytest.raises(OnnxEncoderError, match="--ct2_encoder=ct2"):
        load_onnx_encoder(base_ct2_dir)


@pytest.mark.slow
def test_whisper_bases_onnx_encoder_matches_ctranslate2_float32(base_ct2_dir: Path, en_wav, capfd) -> None:
    """The packaged whisper-base (float16 weights) on onnxruntime computes what CTranslate2's own encoder computes
    in float32 on real speech, in a 30 s window and in a 10 s one; loading it prints nothing (onnxruntime warns on
    stderr about, e.g., an initializer no node uses)."""
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    feats = FeatureExtractor()(load_audio(en_wav))[..., :-1]
    ct2_model = ctranslate2.models.Whisper(str(base_ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    capfd.readouterr()
    ours = load_onnx_encoder(base_ct2_dir, threads=1)
    assert capfd.readouterr().err == ""
    for frames in (3000, 1000):
        x = np.ascontiguousarray(np.pad(feats, ((0, 0), (0, max(0, frames - feats.shape[-1]))))[None, :, :frames],
                                 dtype=np.float32)
        reference = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(x)))
        got = ours(x)
        assert got.shape == reference.shape == (1, frames // 2, 512)
        assert np.abs(got - reference).max() < 1e-2


def test_auto_never_picks_onnx_and_onnx_is_a_cpu_choice(monkeypatch) -> None:
    """auto: PyTorch bf16 with AMX, CTranslate2 otherwise (AVX2, VNNI, GPU; also under WHISPER_FT_CPU=avx2 on an AMX
    machine); onnx only when asked for, and only on the CPU."""
    def cpu(*flags: str) -> None:
        monkeypatch.setattr(device_mod, "cpu_flags", lambda: sorted(["avx", "avx2", "fma", *flags]))

    monkeypatch.delenv(device_mod.CPU_PROFILE_ENV, raising=False)
    cpu("amx_tile", "amx_bf16", "avx512_vnni")
    assert resolve_ct2_encoder("auto", "cpu") == "torch"
    assert resolve_ct2_encoder("auto", "cuda") == "ct2"
    monkeypatch.setenv(device_mod.CPU_PROFILE_ENV, "avx2")
    assert resolve_ct2_encoder("auto", "cpu") == "ct2"
    monkeypatch.delenv(device_mod.CPU_PROFILE_ENV)
    for flags in (("avx512f", "avx512_vnni"), ("avx_vnni",), ()):
        cpu(*flags)
        assert resolve_ct2_encoder("auto", "cpu") == "ct2"
        assert resolve_ct2_encoder("onnx", "cpu") == "onnx"
    for name in ("onnx", "torch"):
        with pytest.raises(ValueError, match="GPU"):
            resolve_ct2_encoder(name, "cuda")
    with pytest.raises(ValueError, match="encoder must be one of"):
        resolve_ct2_encoder("tpu", "cpu")


def test_int8_weights_read_for_the_encoder_at_every_load_are_not_a_warning(caplog) -> None:
    """De-quantising int8 weights warns when a conversion keeps their error for good; the encoder built at each
    load (the auto choice on AVX2 for an int8 CT2 folder) says it at INFO, not on every command's stderr."""
    import logging

    from utils.ct2_format import dequantize

    variables = {"encoder/fc/weight": np.array([[2, -4]], np.int8),
                 "encoder/fc/weight_scale": np.array([2.0], np.float32)}
    for warn, level in ((True, logging.WARNING), (False, logging.INFO)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="utils.ct2_format"):
            out = dequantize(variables, {}, Path("model.bin"), prefix="encoder/", warn=warn)
        np.testing.assert_array_equal(out["encoder/fc/weight"], [[1.0, -2.0]])
        assert [r.levelno for r in caplog.records] == [level]
