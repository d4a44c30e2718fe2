"""Augmentation config: validation messages, each waveform step, SpecAugment into the model config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from utils.augment import AugmentConfigError, apply_spec_augment, load_augment_config


def _write(path, entries) -> str:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_repo_example_config_is_valid(repo_root):
    aug = load_augment_config(repo_root / "configs" / "augmentation.json")
    assert [s[0] for s in aug.steps] == ["speed", "shift", "volume", "resample", "noise"]
    assert aug.spec_augment["mask_time_prob"] == 0.05


def test_empty_noise_folder_is_an_error(tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    cfg = _write(tmp_path / "a.json", [{"type": "noise", "params": {"noise_dir": str(noise_dir)}, "prob": 0.5}])
    with pytest.raises(AugmentConfigError, match=r"a\.json: entry 0: noise_dir .* holds no audio files"):
        load_augment_config(cfg)


@pytest.mark.parametrize("entries, message", [
    ([{"type": "reverb"}], "unknown type 'reverb'"),
    ([{"type": "volume", "prob": 1.5}], r"'prob' must be a number in \[0, 1\]"),
    ([{"type": "specaugment", "params": {"mask_prob": 0.1}}], "unknown specaugment params"),
    ({"type": "volume"}, "expected a JSON list"),
])
def test_invalid_configs(tmp_path, entries, message):
    with pytest.raises(AugmentConfigError, match=message):
        load_augment_config(_write(tmp_path / "bad.json", entries))


def test_missing_config_file(tmp_path):
    with pytest.raises(AugmentConfigError, match="not found"):
        load_augment_config(tmp_path / "nope.json")


def test_speed_changes_length_and_time_scale(tmp_path):
    aug = load_augment_config(_write(tmp_path / "s.json", [
        {"type": "speed", "params": {"min_speed_rate": 1.25, "max_speed_rate": 1.25, "num_rates": 1}, "prob": 1.0}]))
    out, scale = aug(_tone(1.0), np.random.default_rng(0))
    assert out.shape[0] == 12800 and scale == pytest.approx(0.8)


def test_shift_and_volume_keep_length(tmp_path):
    aug = load_augment_config(_write(tmp_path / "v.json", [
        {"type": "shift", "params": {"min_shift_ms": 5, "max_shift_ms": 5}, "prob": 1.0},
        {"type": "volume", "params": {"min_gain_dBFS": -6, "max_gain_dBFS": -6}, "prob": 1.0}]))
    x = _tone()
    out, scale = aug(x, np.random.default_rng(0))
    assert out.shape == x.shape and scale == 1.0
    assert np.all(out[:80] == 0)  # 5 ms shift right
    np.testing.assert_allclose(out[80:], x[:-80] * 10 ** (-6 / 20), atol=1e-6)


def test_noise_from_folder_at_snr_and_deterministic(tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(noise_dir / "n.wav", np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    aug = load_augment_config(_write(tmp_path / "n.json", [
        {"type": "noise", "params": {"noise_dir": str(noise_dir), "min_snr_dB": 10, "max_snr_dB": 10},
         "prob": 1.0}]))
    x = _tone()
    out, _ = aug(x, np.random.default_rng(3))
    noise = out - x
    snr = 10 * np.log10(np.mean(x ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(10, abs=0.5)
    again, _ = aug(x, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)


def test_prob_zero_never_applies(tmp_path):
    aug = load_augment_config(_write(tmp_path / "z.json", [{"type": "volume", "prob": 0.0}]))
    x = _tone()
    out, _ = aug(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    assert not aug.has_waveform_steps


def test_spec_augment_goes_into_model_config(tmp_path):
    aug = load_augment_config(_write(tmp_path / "sa.json", [
        {"type": "specaugment", "params": {"mask_time_prob": 0.1, "mask_feature_prob": 0.2}}]))
    config = SimpleNamespace(apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0)
    apply_spec_augment(config, aug.spec_augment)
    assert config.apply_spec_augment is True and config.mask_time_prob == 0.1 and config.mask_feature_prob == 0.2


def test_speed_never_slows_a_clip_past_30_seconds(tmp_path):
    """A 28.5 s clip at rate 0.9 would last 31.7 s and be cut, while its label keeps every word: the rate is
    clamped so the clip fills the 30 s window at most, and the time scale says what was applied."""
    aug = load_augment_config(_write(tmp_path / "s.json", [
        {"type": "speed", "params": {"min_speed_rate": 0.9, "max_speed_rate": 0.9, "num_rates": 1}, "prob": 1.0}]))
    out, scale = aug(_tone(28.5), np.random.default_rng(0))
    assert out.shape[0] <= 30 * 16000
    assert out.shape[0] / (28.5 * 16000) == pytest.approx(scale, abs=1e-4) and scale > 1.0
    short, short_scale = aug(_tone(10.0), np.random.default_rng(0))  # shorter clips keep the asked rate
    assert short.shape[0] == round(10 * 16000 / 0.9) and short_scale == pytest.approx(1 / 0.9)


def test_noise_dir_is_read_beside_the_config_and_expands_home(tmp_path, monkeypatch, zh_wav):
    """"noise_dir": "noise" next to the config was looked for in the working directory ("does not exist" unless run
    from the config's folder), and "~/noise" was taken literally."""
    import shutil

    (tmp_path / "cfg" / "noise").mkdir(parents=True)
    shutil.copy(zh_wav, tmp_path / "cfg" / "noise" / "n.wav")
    cfg = _write(tmp_path / "cfg" / "aug.json", [{"type": "noise", "params": {"noise_dir": "noise"}, "prob": 0.5}])
    monkeypatch.chdir("/")
    assert load_augment_config(cfg) is not None
    monkeypatch.setenv("HOME", str(tmp_path / "cfg"))
    home = _write(tmp_path / "h.json", [{"type": "noise", "params": {"noise_dir": "~/noise"}, "prob": 0.5}])
    assert load_augment_config(home) is not None


def test_a_clip_read_at_its_own_speed_draws_its_other_steps_as_it_did():
    """A packed clip slowed past its window is read again without the speed step (utils.train_data): its other steps
    (a volume gain here) drew other numbers once the speed step drew none (gain 0.48 became 1.31)."""
    import numpy as np

    from utils.augment import _STEPS, Augmenter, _speed

    augmenter = Augmenter(steps=[("speed", 1.0, {"min_speed_rate": 0.9, "max_speed_rate": 1.1, "num_rates": 3}, _speed),
                                 ("volume", 1.0, {"min_gain_dBFS": -15, "max_gain_dBFS": 15}, _STEPS["volume"])])
    x = np.full(16000, 0.1, np.float32)
    for seed in range(5):
        fast, _ = augmenter(x, np.random.default_rng(seed))
        own, scale = augmenter(x, np.random.default_rng(seed), speed=False)
        assert scale == 1.0 and len(own) == len(x) and np.isclose(fast.max(), own.max())

