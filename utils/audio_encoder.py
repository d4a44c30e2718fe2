"""Whisper's audio encoder in plain PyTorch, for running a CTranslate2 model's encoder in bf16 on the CPU.

Parameter names follow transformers' ``WhisperEncoder`` (``conv1``, ``layers.0.self_attn.q_proj`` …), so the
state dict :mod:`utils.ct2_format` maps from a CT2 ``model.bin`` loads as is (``load_ct2_encoder``). Importing this module does not
import transformers (about 2.4 s on our CPU), which the ct2 inference backend otherwise never needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class _SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (b, t, d) → (b, heads, t, d / heads)
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _Layer(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(d_model, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: the fp32 residual stream; the sublayers compute in the weights' dtype (bf16)."""
        dtype = self.fc1.weight.dtype
        x = x + self.self_attn(self.self_attn_layer_norm(x.to(dtype))).float()
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x.to(dtype))))).float()


class _Positions(nn.Module):
    """The fixed sinusoidal positions, (max_positions, d_model), as ``weight`` (transformers' name). Not an
    ``nn.Embedding``: its random initialisation on the meta device imports ``torch._dynamo`` (about 2 s) the first
    time."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_positions, d_model))


class AudioEncoder(nn.Module):
    """Log-mel features (batch, n_mels, frames) → hidden states (batch, frames / 2, d_model).

    Pre-norm transformer layers after two GELU convolutions (the second with stride 2) and fixed sinusoidal
    positions, as in Whisper; attention through ``scaled_dot_product_attention``. With bf16 weights the matrix
    products run in bf16 but the residual stream is kept in fp32: summed in bf16 over the layers, the frames of a
    mostly silent 30 s window (a short clip, a streaming buffer) drift enough to change words.
    """

    def __init__(self, *, n_mels: int, d_model: int, layers: int, heads: int, ffn_dim: int,
                 max_positions: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = _Positions(max_positions, d_model)
        self.layers = nn.ModuleList(_Layer(d_model, heads, ffn_dim) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dtype = self.conv1.weight.dtype
        x = F.gelu(self.conv2(F.gelu(self.conv1(features.to(dtype))))).transpose(1, 2).float()
        x = x + self.embed_positions.weight[: x.shape[1]].float()
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x.to(dtype))


ENCODER_DTYPES = ("float32", "float16", "bfloat16")


def load_ct2_encoder(ct2_dir: str | os.PathLike, *, dtype: str = "bfloat16") -> AudioEncoder:
    """The audio encoder of a CTranslate2 Whisper folder as a PyTorch module (:class:`AudioEncoder`, eval mode).

    Only the ``encoder/`` variables are read and de-quantised (int8, float16); the decoder stays on disk.
    Input: log-mel features (batch, n_mels, 3000); output (batch, 1500, d_model), what
    ``ctranslate2.models.Whisper.encode`` returns, so the decoder can run in CTranslate2 on it.

    Raises:
        CT2FormatError: the folder is not a supported CTranslate2 Whisper model.
    """
    import numpy as np

    from utils.ct2_format import CT2FormatError, hf_state_dict, load_ct2_config, read_whisper

    if dtype not in ENCODER_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(ENCODER_DTYPES)}")
    model_bin = Path(ct2_dir) / "model.bin"
    weights, dims = read_whisper(model_bin, load_ct2_config(Path(ct2_dir)), prefix="encoder/")  # decoder untouched
    prefix = "model.encoder."
    state = {k[len(prefix):]: v for k, v in hf_state_dict(weights, dims, model_bin, stacks=("encoder",)).items()}
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
