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
from utils.transcribe import TORCH_ENCODER_MIN_AUDIO_S, resolve_ct2_encoder

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
    for signed in (True, False):  # the int8 projections: MatMulInteger on int8 / uint8 weights stored (in, out)
        int8 = onnx.load_from_string(encoder_graph(_state(_random_encoder()), heads=HEADS, fused_attention=False,
                                                   int8=True, signed_weights=signed))
        onnx.checker.check_model(int8, full_check=True)
        assert sum(n.op_type == "MatMulInteger" for n in int8.graph.node) == 4 * LAYERS
        assert not [n for n in int8.graph.node if n.op_type == "Gemm"]
        weight = next(t for t in int8.graph.initializer if t.name == "layers.1.fc2.weight_q")
        assert weight.data_type == (onnx_proto.INT8 if signed else onnx_proto.UINT8)
        assert list(weight.dims) == [FFN, D_MODEL]


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


def _fake_int8(encoder: AudioEncoder) -> None:
    """Make a PyTorch encoder compute what the int8 graph computes, in float: every linear layer's weight rounded to
    int8 with one scale per output channel, its input rounded to int8 with one scale per row (float32 holds these
    integer sums exactly)."""
    def rows(module, args):
        x = args[0]
        scale = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
        return (torch.round(x / scale) * scale,)

    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            with torch.no_grad():
                w = module.weight
                scale = w.abs().amax(1, keepdim=True) / 127
                w.copy_(torch.round(w / scale) * scale)
            module.register_forward_pre_hook(rows)


def test_int8_columns_round_trip_ctranslate2s_integers() -> None:
    """quantize_columns gives back the integers a CTranslate2 int8 weight was de-quantised from (scale per output row),
    transposed to (in, out); an all-zero row stays zero."""
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, size=(6, 5)).astype(np.int8)
    q[:, 0] = 127  # CTranslate2's scale maps each row's largest |w| to 127
    q[3] = 0
    ct2_scale = rng.uniform(50, 500, size=6).astype(np.float32)
    ours, scale = onnx_encoder.quantize_columns(q.astype(np.float32) / ct2_scale[:, None])
    assert ours.dtype == np.int8 and ours.shape == (5, 6)
    np.testing.assert_array_equal(ours, q.T)
    np.testing.assert_allclose(scale[[0, 1, 2, 4, 5]], 1 / ct2_scale[[0, 1, 2, 4, 5]], rtol=1e-6)


@pytest.mark.parametrize("signed", [False] + ([True] if device_mod.cpu_has_vnni() else []))
def test_the_int8_graph_computes_integer_products(signed: bool) -> None:
    """int8 graph = the PyTorch encoder with int8-rounded weights (per output channel) and inputs (per row) to every
    projection, batch of two; uint8 weights (exact on any CPU) always, int8 weights where this CPU has VNNI (without
    VNNI onnxruntime's kernels for them add product pairs in int16 and may saturate: load_onnx_encoder never picks them
    there). And it stays close to float32."""
    encoder = _random_encoder()
    state = _state(encoder)
    feats = np.random.default_rng(1).standard_normal((2, N_MELS, 1000)).astype(np.float32)
    ours = OnnxEncoder(encoder_graph(state, heads=HEADS, int8=True, signed_weights=signed), threads=1)(feats)
    with torch.inference_mode():
        exact = encoder(torch.from_numpy(feats)).numpy()
    _fake_int8(encoder)
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(feats)).numpy()
    assert ours.shape == reference.shape == (2, 500, D_MODEL)
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)
    assert 0 < np.abs(ours - exact).mean() < 0.05 * np.abs(exact).mean()


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
    in float32 on real speech, in a 30 s window and in a 10 s one, and in int8 about as near to it as CTranslate2's
    int8; loading it prints nothing (onnxruntime warns on stderr about, e.g., an initializer no node uses)."""
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    feats = FeatureExtractor()(load_audio(en_wav))[..., :-1]
    ct2_model = ctranslate2.models.Whisper(str(base_ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    ct2_int8 = ctranslate2.models.Whisper(str(base_ct2_dir), device="cpu", compute_type="int8", intra_threads=1)
    capfd.readouterr()
    ours = load_onnx_encoder(base_ct2_dir, threads=1)
    ours_int8 = load_onnx_encoder(base_ct2_dir, threads=1, int8=True)
    assert capfd.readouterr().err == ""
    for frames in (3000, 1000):
        x = np.ascontiguousarray(np.pad(feats, ((0, 0), (0, max(0, frames - feats.shape[-1]))))[None, :, :frames],
                                 dtype=np.float32)
        reference = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(x)))
        got = ours(x)
        assert got.shape == reference.shape == (1, frames // 2, 512)
        assert np.abs(got - reference).max() < 1e-2
        # int8: CTranslate2's scheme, so about CTranslate2 int8's distance from float32, and nearer to it than that
        ct2_error = np.abs(np.asarray(ct2_int8.encode(ctranslate2.StorageView.from_array(x))) - reference).mean()
        int8_error = np.abs(ours_int8(x) - reference).mean()
        assert 0 < int8_error < 1.5 * ct2_error, (int8_error, ct2_error)


def test_auto_picks_onnx_with_vnni_and_onnx_is_a_cpu_choice(monkeypatch) -> None:
    """auto: PyTorch bf16 with AMX (onnxruntime for less audio than PyTorch's import pays back, or where float32 is
    asked for), onnxruntime with VNNI (AVX-512-VNNI or AVX-VNNI), CTranslate2 otherwise (AVX2, a GPU; also under
    WHISPER_FT_CPU=avx2 on an AMX or VNNI machine); onnx and torch only on the CPU."""
    def cpu(*flags: str) -> None:
        monkeypatch.setattr(device_mod, "cpu_flags", lambda: sorted(["avx", "avx2", "fma", *flags]))

    monkeypatch.delenv(device_mod.CPU_PROFILE_ENV, raising=False)
    cpu("amx_tile", "amx_bf16", "avx512_vnni")
    short = TORCH_ENCODER_MIN_AUDIO_S - 1
    assert resolve_ct2_encoder("auto", "cpu") == "torch"  # amount unknown: a server, live transcription
    assert resolve_ct2_encoder("auto", "cpu", TORCH_ENCODER_MIN_AUDIO_S) == "torch"
    assert resolve_ct2_encoder("auto", "cpu", short) == "onnx"
    assert resolve_ct2_encoder("torch", "cpu", short) == "torch"
    assert resolve_ct2_encoder("auto", "cpu", compute_type="float32") == "onnx"  # float32 asked: no bf16 encoder
    assert resolve_ct2_encoder("auto", "cpu", compute_type="int8_float32") == "torch"
    assert resolve_ct2_encoder("auto", "cuda") == "ct2"
    monkeypatch.setenv(device_mod.CPU_PROFILE_ENV, "avx2")
    assert resolve_ct2_encoder("auto", "cpu", short) == "ct2" and resolve_ct2_encoder("auto", "cpu") == "ct2"
    monkeypatch.delenv(device_mod.CPU_PROFILE_ENV)
    cpu("amx_tile", "amx_bf16")  # no AMX CPU lacks VNNI today; onnxruntime int8 would be slow on one
    assert resolve_ct2_encoder("auto", "cpu", short) == "torch"
    for flags, auto in ((("avx512f", "avx512_vnni"), "onnx"), (("avx_vnni",), "onnx"), (("avx512f",), "ct2"),
                        ((), "ct2")):
        cpu(*flags)
        assert resolve_ct2_encoder("auto", "cpu") == auto, flags
        assert device_mod.cpu_has_vnni() == (auto == "onnx")
        assert resolve_ct2_encoder("onnx", "cpu") == "onnx"
        assert resolve_ct2_encoder("ct2", "cpu") == "ct2"
        assert resolve_ct2_encoder("auto", "cuda") == "ct2"
        monkeypatch.setenv(device_mod.CPU_PROFILE_ENV, "avx2")
        assert resolve_ct2_encoder("auto", "cpu") == "ct2" and not device_mod.cpu_has_vnni()
        monkeypatch.delenv(device_mod.CPU_PROFILE_ENV)
    for name in ("onnx", "torch"):
        with pytest.raises(ValueError, match="GPU"):
            resolve_ct2_encoder(name, "cuda")
    with pytest.raises(ValueError, match="encoder must be one of"):
        resolve_ct2_encoder("tpu", "cpu")


def test_an_int8_folder_gets_the_int8_graph_with_the_weights_this_cpu_multiplies_exactly(base_ct2_dir: Path,
                                                                                         monkeypatch) -> None:
    """load_onnx_encoder(int8=True): int8 weights where the CPU has VNNI, uint8 ones otherwise (and under
    WHISPER_FT_CPU=avx2); float32 without int8."""
    built = []
    real = onnx_encoder.encoder_graph
    monkeypatch.setattr(onnx_encoder, "encoder_graph", lambda *a, **kw: built.append(kw) or real(*a, **kw))
    monkeypatch.setattr(onnx_encoder, "OnnxEncoder", lambda model, threads: None)
    for vnni in (True, False):
        monkeypatch.setattr(onnx_encoder, "cpu_has_vnni", lambda vnni=vnni: vnni)
        load_onnx_encoder(base_ct2_dir, int8=True)
        assert built[-1]["int8"] is True and built[-1]["signed_weights"] is vnni
    load_onnx_encoder(base_ct2_dir)
    assert built[-1]["int8"] is False


def test_auto_takes_ctranslate2_for_an_encoder_too_large_for_one_graph(base_ct2_dir: Path, monkeypatch,
                                                                       caplog) -> None:
    """On a VNNI CPU auto means onnx; an encoder no ONNX graph can hold makes auto run it in CTranslate2 (said at INFO),
    while --ct2_encoder=onnx asked for explicitly fails with the way out."""
    import logging

    from utils import transcribe

    monkeypatch.setattr(transcribe, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(transcribe, "cpu_has_vnni", lambda: True)
    monkeypatch.setattr(onnx_encoder, "MAX_MODEL_BYTES", 10_000_000)
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        engine = transcribe.load_transcriber(str(base_ct2_dir), "ct2", device="cpu", ct2_encoder="auto")
    assert engine.encoder == "ct2" and engine._onnx_encoder is None
    assert "auto runs the encoder in CTranslate2" in caplog.text
    with pytest.raises(OnnxEncoderError, match="--ct2_encoder=ct2"):
        transcribe.load_transcriber(str(base_ct2_dir), "ct2", device="cpu", ct2_encoder="onnx")


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
