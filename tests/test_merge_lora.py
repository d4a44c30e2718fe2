"""merge_lora.py: merged model equals base + adapter, loads with plain transformers, transcribes, exports CT2."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import merge_lora
from utils.lora import LoraOptions, build_adapter


@pytest.fixture(scope="module")
def adapter_dir(tiny_whisper_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with non-zero B matrices (as after training), saved like a checkpoint."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    out = tmp_path_factory.mktemp("adapter")
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    peft_model = build_adapter(model, LoraOptions(r=4, alpha=8), base_model_name=str(tiny_whisper_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    peft_model.save_pretrained(out)
    WhisperProcessor.from_pretrained(tiny_whisper_dir).save_pretrained(out)
    gen = model.generation_config
    gen.language, gen.task = "zh", "transcribe"
    gen.save_pretrained(out)
    return out


def test_merge_loads_and_transcribes(adapter_dir, tiny_whisper_dir, tmp_path, en_wav):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio

    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}"]) == 0
    merged_dir = tmp_path / f"{tiny_whisper_dir.name}-finetune"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "preprocessor_config.json"):
        assert (merged_dir / name).is_file(), name
    merged = WhisperForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert merged.generation_config.language == "zh" and merged.generation_config.task == "transcribe"

    processor = WhisperProcessor.from_pretrained(merged_dir)
    feats = processor.feature_extractor(load_audio(en_wav), sampling_rate=16000, return_tensors="pt").input_features
    dec = torch.tensor([[50258, 50260, 50359, 50363]])
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    with_adapter = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir),
                                             str(adapter_dir)).eval()
    with torch.no_grad():
        got = merged(input_features=feats, decoder_input_ids=dec).logits
        want = with_adapter(input_features=feats, decoder_input_ids=dec).logits
        plain = base(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3), "the adapter changed nothing"
    with torch.no_grad():
        ids = merged.generate(input_features=feats, max_new_tokens=5)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert isinstance(text, str) and ids.shape[1] > 3


def test_refuses_to_overwrite(adapter_dir, tiny_whisper_dir, tmp_path, caplog):
    (tmp_path / f"{tiny_whisper_dir.name}-finetune").mkdir()
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}"]) == 1
    assert "--overwrite" in caplog.text
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}", "--overwrite=true"]) == 0
    assert (tmp_path / f"{tiny_whisper_dir.name}-finetune" / "model.safetensors").is_file()


def test_not_an_adapter_folder(tmp_path, caplog):
    assert merge_lora.main([f"--lora_model={tmp_path}", f"--output_dir={tmp_path / 'm'}"]) == 1
    assert "adapter_config.json" in caplog.text


def test_an_adapter_saved_as_bin_by_older_peft_merges_and_resumes(adapter_dir, tiny_whisper_dir, tmp_path, caplog):
    """Older peft (and upstream's checkpoints) saved adapter_model.bin: merge_lora.py said "no
    adapter_model.safetensors; is it a checkpoint folder?"; one inside adapter_model/ is named."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    from utils.lora import load_adapter_weights

    old = tmp_path / "checkpoint-4"
    shutil.copytree(adapter_dir, old)
    weights = load_file(old / "adapter_model.safetensors")
    (old / "adapter_model.safetensors").unlink()
    torch.save(weights, old / "adapter_model.bin")
    assert merge_lora.main([f"--lora_model={old}", f"--output_dir={tmp_path / 'bin'}"]) == 0
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path / 'st'}"]) == 0
    name = f"{tiny_whisper_dir.name}-finetune"
    got, want = (WhisperForConditionalGeneration.from_pretrained(tmp_path / d / name).state_dict()
                 for d in ("bin", "st"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    lora = build_adapter(WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir), LoraOptions(r=4, alpha=8),
                         base_model_name=str(tiny_whisper_dir))
    load_adapter_weights(lora, old)  # resuming reads it too
    loaded = get_peft_model_state_dict(lora)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    (old / "adapter_model.bin").write_bytes(b"not a state dict")
    assert merge_lora.main([f"--lora_model={old}", f"--output_dir={tmp_path / 'bad'}"]) == 1
    assert f"{old / 'adapter_model.bin'}: damaged or truncated" in caplog.text
    nested = tmp_path / "upstream"
    shutil.copytree(adapter_dir, nested / "adapter_model")
    assert merge_lora.main([f"--lora_model={nested}", f"--output_dir={tmp_path / 'nested'}"]) == 1
    assert f"its adapter is in the subfolder adapter_model/: pass {nested / 'adapter_model'}" in caplog.text


def test_ct2_export(adapter_dir, tiny_whisper_dir, tmp_path, en_wav):
    import ctranslate2

    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}", "--ct2",
                            "--quantization=int8"]) == 0
    ct2_dir = tmp_path / f"{tiny_whisper_dir.name}-finetune-ct2"
    assert (ct2_dir / "model.bin").is_file()
    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="int8")
    feats = ctranslate2.StorageView.from_array(np.zeros((1, 80, 3000), dtype=np.float32))
    result = model.generate(feats, [[50258, 50260, 50359, 50363]], max_length=8)
    assert len(result[0].sequences_ids[0]) >= 1
    # both the merged model and its CTranslate2 copy keep the alignment heads word timestamps need
    import json

    merged = json.loads((tmp_path / f"{tiny_whisper_dir.name}-finetune" / "generation_config.json").read_text())
    assert merged["alignment_heads"] == [[0, 0], [1, 1]]
    assert json.loads((ct2_dir / "config.json").read_text())["alignment_heads"] == [[0, 0], [1, 1]]
    # and the generation config, from which the ct2 backend reads the language the model was fine-tuned on
    assert json.loads((ct2_dir / "generation_config.json").read_text()) == merged


def test_an_old_ct2_copy_is_named_before_merging_and_replaced_whole(adapter_dir, tiny_whisper_dir, tmp_path, caplog):
    """A -ct2 folder left by an earlier merge: the merged model was saved, then a traceback from CTranslate2 said
    "use --force" (merge_lora.py has --overwrite). Now both folders are checked before merging; with --overwrite the
    copy is converted in a staging folder and replaces the old one; --overwrite without --ct2 says the old copy no
    longer matches."""
    merged = tmp_path / f"{tiny_whisper_dir.name}-finetune"
    old = tmp_path / f"{tiny_whisper_dir.name}-finetune-ct2"
    old.mkdir()
    (old / "stale.txt").write_text("from an earlier merge")
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}", "--ct2=True"]) == 1
    assert f"{old} already exists; pass --overwrite" in caplog.text and not merged.exists()
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}", "--ct2=True",
                            "--overwrite=True"]) == 0
    assert (old / "model.bin").is_file() and not (old / "stale.txt").exists()
    caplog.clear()
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}", "--overwrite=True"]) == 0
    assert "will not match the new merge; export it again with --ct2=True" in caplog.text


def test_an_adapter_merged_into_another_base_model_is_one_clear_error(adapter_dir, whisper_base_dir, tmp_path, caplog):
    """A tiny model's adapter merged into whisper-base printed a 153-line "size mismatch" traceback."""
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}",
                            f"--base_model={whisper_base_dir}"]) == 1
    assert "the adapter does not fit this base model (d_model 512, 6 encoder layers): size mismatch" in caplog.text
    assert "Traceback" not in caplog.text and not any(tmp_path.iterdir())


def test_an_adalora_checkpoint_loaded_as_lora_says_to_pass_use_adalora(tiny_whisper_dir, tmp_path):
    """Resuming an AdaLoRA run with --use_adalora=False said only "unexpected keys … lora_E"."""
    from transformers import WhisperForConditionalGeneration

    from utils.lora import load_adapter_weights

    ada = build_adapter(WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir),
                        LoraOptions(use_adalora=True, total_step=10), base_model_name=str(tiny_whisper_dir))
    ada.save_pretrained(tmp_path / "ada")
    lora = build_adapter(WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir), LoraOptions(r=4, alpha=8),
                         base_model_name=str(tiny_whisper_dir))
    with pytest.raises(ValueError, match="it is an AdaLoRA adapter: resume it with --use_adalora=True"):
        load_adapter_weights(lora, tmp_path / "ada")


def test_an_adalora_adapter_merges_without_peft_listing_its_ranks_and_refuses_another_base(tiny_whisper_dir,
                                                                                              whisper_base_dir,
                                                                                              tmp_path, caplog):
    """An AdaLoRA merge printed peft's warning that all 96 rank_pattern keys "were ignored" (they are parameter
    names, peft compares module names; the merge applies them), and merged into a model with fewer layers it ended
    in "AttributeError: ModuleList has no attribute `4`"."""
    import warnings

    from transformers import WhisperForConditionalGeneration

    from utils.lora import merge_adapter

    base = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir)
    ada = build_adapter(base, LoraOptions(use_adalora=True, total_step=10), base_model_name=str(whisper_base_dir))
    config = ada.peft_config["default"]
    config.rank_pattern = {n: [True] * config.init_r  # as peft's allocator names them
                           for n, _ in ada.base_model.model.named_parameters() if "lora_E.default" in n}
    ada.save_pretrained(tmp_path / "ada")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_adapter(WhisperForConditionalGeneration.from_pretrained(whisper_base_dir), tmp_path / "ada")
    assert not [w for w in caught if "rank_pattern" in str(w.message)]
    assert merge_lora.main([f"--lora_model={tmp_path / 'ada'}", f"--output_dir={tmp_path / 'out'}",
                            f"--base_model={tiny_whisper_dir}"]) == 1
    assert "the adapter does not fit this base model" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ctrl_c_while_merging_is_one_line_and_exit_130(adapter_dir, tiny_whisper_dir, tmp_path, monkeypatch,
                                                       caplog):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_lora, "merge", interrupted)
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path}",
                            f"--base_model={tiny_whisper_dir}"]) == 130
    assert "interrupted: no half-written folder is left" in caplog.text and not any(tmp_path.iterdir())


def test_ctrl_c_during_the_ct2_export_says_the_old_copy_is_stale(adapter_dir, tiny_whisper_dir, tmp_path,
                                                                   monkeypatch, caplog):
    """--overwrite=True --ct2=True, Ctrl-C after the merge was published: the -ct2 folder was still the previous
    model's copy, and the message said only "no half-written folder is left" (the web UI picks -ct2 on a CPU)."""
    out = tmp_path / "models"
    stale = out / f"{tiny_whisper_dir.name}-finetune-ct2"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"the previous model")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_lora, "export_ct2", interrupted)
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={out}", f"--base_model={tiny_whisper_dir}",
                            "--overwrite=True", "--ct2=True"]) == 130
    assert f"{stale} is still the previous model's copy, not this merge's" in caplog.text
    assert "Traceback" not in caplog.text
    caplog.clear()  # without --overwrite the merge now stands in the way of the same command: say so

    def broken(*args, **kwargs):
        raise RuntimeError("converter broke")

    monkeypatch.setattr(merge_lora, "export_ct2", broken)
    assert merge_lora.main([f"--lora_model={adapter_dir}", f"--output_dir={tmp_path / 'fresh'}",
                            f"--base_model={tiny_whisper_dir}", "--ct2=True"]) == 1
    assert "export of" in caplog.text and "failed (converter broke); run the same command again with " \
        "--overwrite=True (the merge is published)" in caplog.text


def test_merged_dir_name():
    assert merge_lora.merged_dir_name("openai/whisper-tiny") == "whisper-tiny-finetune"
    assert merge_lora.merged_dir_name("models/whisper-base/") == "whisper-base-finetune"


def test_a_base_model_without_generation_config_merges(adapter_dir, tiny_whisper_dir, tmp_path, caplog):
    """A base model saved by an older transformers (no generation_config.json) failed the merge with an OSError
    from GenerationConfig.from_pretrained; its Whisper fields come from the tokenizer now, said in a warning."""
    from transformers import GenerationConfig

    base = tmp_path / "old-base"
    shutil.copytree(tiny_whisper_dir, base)
    (base / "generation_config.json").unlink()
    lora = tmp_path / "checkpoint-2"
    shutil.copytree(adapter_dir, lora)
    (lora / "generation_config.json").unlink()
    assert merge_lora.main([f"--lora_model={lora}", f"--base_model={base}", f"--output_dir={tmp_path / 'm'}"]) == 0
    assert "generation_config.json missing or incomplete" in caplog.text
    merged = GenerationConfig.from_pretrained(tmp_path / "m" / "old-base-finetune")
    assert merged.no_timestamps_token_id == 50363 and merged.lang_to_id["<|zh|>"] == 50260
