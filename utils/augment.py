"""Waveform augmentation from a JSON config, plus SpecAugment settings for the model config.

Config file (a JSON list; each entry applied with probability ``prob``, in order)::

    [{"type": "speed",    "params": {"min_speed_rate": 0.9, "max_speed_rate": 1.1, "num_rates": 3}, "prob": 0.5},
     {"type": "shift",    "params": {"min_shift_ms": -5, "max_shift_ms": 5}, "prob": 0.5},
     {"type": "volume",   "params": {"min_gain_dBFS": -15, "max_gain_dBFS": 15}, "prob": 0.5},
     {"type": "resample", "params": {"new_sample_rates": [8000, 32000, 44100]}, "prob": 0.0},
     {"type": "noise",    "params": {"min_snr_dB": 10, "max_snr_dB": 50, "noise_dir": "dataset/noise"}, "prob": 0.5},
     {"type": "specaugment", "params": {"mask_time_prob": 0.05, "mask_feature_prob": 0.05}}]

``specaugment`` is not a waveform step: its params go into the model config (``apply_spec_augment``,
``mask_time_prob``, ``mask_time_length``, ``mask_feature_prob`` ...), where Whisper's encoder applies
them in training mode only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, WINDOW_S, AudioLoadError, load_audio, resample

logger = logging.getLogger(__name__)

SPEC_AUGMENT_KEYS = ("mask_time_prob", "mask_time_length", "mask_time_min_masks",
                     "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks")


class AugmentConfigError(ValueError):
    """The augmentation config is invalid; the message names the file, entry and field."""


def _speed_rate(rng: np.random.Generator, p: dict[str, Any]) -> float:
    """The speed step's rate, drawn from ``rng``."""
    lo, hi, n = float(p.get("min_speed_rate", 0.9)), float(p.get("max_speed_rate", 1.1)), int(p.get("num_rates", 3))
    return float(rng.choice(np.linspace(lo, hi, n))) if n > 0 else float(rng.uniform(lo, hi))


def _speed(samples: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Play faster/slower by resampling the time axis (pitch changes too); returns the time scale."""
    rate = _speed_rate(rng, p)
    old_len = samples.shape[0]
    # never slow a clip past Whisper's 30 s window: the audio would be cut while its label keeps every word
    rate = max(rate, old_len / (WINDOW_S * SAMPLE_RATE))
    if abs(rate - 1.0) < 1e-6:
        return samples, 1.0
    new_len = max(1, int(round(old_len / rate)))
    new = np.interp(np.linspace(0, old_len - 1, new_len), np.arange(old_len), samples).astype(np.float32)
    return new, 1.0 / rate


def _shift(samples: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Shift in time by a few ms, zero-filling the gap (length unchanged)."""
    ms = rng.uniform(float(p.get("min_shift_ms", -5)), float(p.get("max_shift_ms", 5)))
    n = int(round(abs(ms) / 1000 * SAMPLE_RATE))
    if n == 0 or n >= samples.shape[0]:
        return samples
    out = np.zeros_like(samples)
    if ms > 0:
        out[n:] = samples[:-n]
    else:
        out[:-n] = samples[n:]
    return out


def _volume(samples: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    gain_db = rng.uniform(float(p.get("min_gain_dBFS", -15)), float(p.get("max_gain_dBFS", 15)))
    return np.clip(samples * 10.0 ** (gain_db / 20.0), -1.0, 1.0).astype(np.float32)


def _resample_roundtrip(samples: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Simulate a different recording rate: resample to it and back to 16 kHz."""
    rate = int(rng.choice(p.get("new_sample_rates", [8000, 32000, 44100])))
    return resample(resample(samples, SAMPLE_RATE, rate), rate, SAMPLE_RATE)


@dataclass
class _NoiseSource:
    files: list[str]

    def __call__(self, samples: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
        path = self.files[int(rng.integers(len(self.files)))]
        noise = load_audio(path)
        if noise.shape[0] < samples.shape[0]:
            noise = np.tile(noise, int(np.ceil(samples.shape[0] / noise.shape[0])))
        start = int(rng.integers(noise.shape[0] - samples.shape[0] + 1))
        noise = noise[start: start + samples.shape[0]]
        snr_db = rng.uniform(float(p.get("min_snr_dB", 10)), float(p.get("max_snr_dB", 50)))
        sig_power = float(np.mean(samples ** 2)) + 1e-10
        noise_power = float(np.mean(noise ** 2)) + 1e-10
        scale = np.sqrt(sig_power / (noise_power * 10.0 ** (snr_db / 10.0)))
        return np.clip(samples + scale * noise, -1.0, 1.0).astype(np.float32)


_STEPS: dict[str, Callable] = {"shift": _shift, "volume": _volume, "resample": _resample_roundtrip}
_KNOWN = ("speed", "shift", "volume", "resample", "noise", "specaugment")


@dataclass
class Augmenter:
    """Apply the configured waveform steps; ``__call__`` returns (samples, time_scale)."""

    steps: list[tuple[str, float, dict[str, Any], Callable | None]] = field(default_factory=list)
    spec_augment: dict[str, Any] = field(default_factory=dict)

    def __call__(self, samples: np.ndarray, rng: np.random.Generator, speed: bool = True) -> tuple[np.ndarray, float]:
        """``samples`` through the steps drawn with ``rng``; ``speed`` False: the speed step left out (a clip that
        slowed down would not fit the training window it was packed into), its rate still drawn, so the other steps
        draw as they did."""
        time_scale = 1.0
        for kind, prob, params, fn in self.steps:
            if rng.random() >= prob:
                continue
            if kind == "speed" and not speed:
                _speed_rate(rng, params)
                continue
            if kind == "speed":
                samples, scale = _speed(samples, rng, params)
                time_scale *= scale
            else:
                samples = fn(samples, rng, params)
        return samples, time_scale

    @property
    def has_waveform_steps(self) -> bool:
        return any(prob > 0 for _, prob, _, _ in self.steps)


def _noise_files(noise_dir: str, where: str) -> list[str]:
    if not os.path.isdir(noise_dir):
        raise AugmentConfigError(f"{where}: noise_dir {noise_dir} does not exist; point it at a folder of noise clips")
    files = sorted(str(f) for f in Path(noise_dir).rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise AugmentConfigError(f"{where}: noise_dir {noise_dir} holds no audio files "
                                 f"({', '.join(AUDIO_EXTENSIONS)}); add noise clips or set its prob to 0")
    return files


def _config_relative(folder: str, config_path: str) -> str:
    """A folder named in a config file: ``~`` expanded; a relative one against the config's folder first, then the
    working directory (as manifests' audio paths; the bundled config's "dataset/noise" worked only from the
    repository root)."""
    folder = os.path.expanduser(folder)
    if os.path.isabs(folder):
        return folder
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), folder)
    return beside if os.path.isdir(beside) or not os.path.isdir(folder) else folder


def load_augment_config(path: str | os.PathLike) -> Augmenter:
    """Read and validate an augmentation config file.

    Raises:
        AugmentConfigError: missing file, bad JSON, unknown type, bad prob, empty noise folder.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError as e:
        raise AugmentConfigError(f"{path}: augmentation config not found") from e
    except json.JSONDecodeError as e:
        raise AugmentConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list):
        raise AugmentConfigError(f"{path}: expected a JSON list of {{type, params, prob}} objects")
    augmenter = Augmenter()
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "type" not in entry:
            raise AugmentConfigError(f"{where}: must be an object with 'type' (one of {', '.join(_KNOWN)})")
        kind = entry["type"]
        if kind not in _KNOWN:
            raise AugmentConfigError(f"{where}: unknown type {kind!r}; use one of {', '.join(_KNOWN)}")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise AugmentConfigError(f"{where}: 'params' must be an object")
        if kind == "specaugment":
            unknown = sorted(set(params) - set(SPEC_AUGMENT_KEYS))
            if unknown:
                raise AugmentConfigError(f"{where}: unknown specaugment params {unknown}; "
                                         f"allowed: {', '.join(SPEC_AUGMENT_KEYS)}")
            augmenter.spec_augment = dict(params)
            continue
        prob = entry.get("prob", 1.0)
        if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
            raise AugmentConfigError(f"{where}: 'prob' must be a number in [0, 1], got {prob!r}")
        fn: Callable | None = _STEPS.get(kind)
        if kind == "noise":
            if "noise_dir" not in params:
                raise AugmentConfigError(f"{where}: noise needs params.noise_dir (a folder of noise clips)")
            fn = (_NoiseSource(_noise_files(_config_relative(str(params["noise_dir"]), path), where)) if prob > 0
                  else None)
        augmenter.steps.append((kind, float(prob), params, fn))
    return augmenter


def apply_spec_augment(model_config, spec_augment: dict[str, Any]) -> None:
    """Switch on SpecAugment in a Whisper model config (used by the encoder in training mode only)."""
    if not spec_augment:
        return
    model_config.apply_spec_augment = True
    for key, value in spec_augment.items():
        setattr(model_config, key, value)
    logger.info("SpecAugment on: %s", spec_augment)


__all__ = ["Augmenter", "AugmentConfigError", "AudioLoadError", "apply_spec_augment", "load_augment_config"]
