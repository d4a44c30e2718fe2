"""LoRA / AdaLoRA adapters for Whisper (peft): build, load for resuming, merge into the base model."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraOptions:
    """Adapter settings.

    ``target_modules`` are module-name suffixes (``q_proj``) or full-name regexes; prefix a suffix with
    ``decoder.`` / ``encoder.`` (``decoder.q_proj``) to limit it to one side of the model.
    ``encoder_layers`` keeps the encoder's adapters to its top N layers (None = every layer, 0 = none):
    the layers below them stay frozen, so training runs them without gradients and can cache their output.
    AdaLoRA needs ``total_step`` = the number of *optimizer* steps of the run.
    """

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    use_adalora: bool = False
    adalora_init_r: int = 12
    adalora_target_r: int = 4
    total_step: int | None = None
    encoder_layers: int | None = None


@contextlib.contextmanager
def _peft_on_transformers():
    """peft wrapping a transformers 5 model reads a property transformers 5 deprecated (``is_gradient_checkpointing``):
    that FutureWarning, meant for peft's authors, is not shown to our users (any other warning is)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def peft_target_modules(target_modules: tuple[str, ...], encoder_layer_ids: list[int] | None = None
                        ) -> list[str] | str:
    """peft takes a list of suffixes, or one regex; side-limited names need the regex form.

    ``encoder_layer_ids`` (None = all) limits the encoder's adapters to those layer indices; a name without a
    side prefix then means every decoder layer plus those encoder layers.
    """
    if encoder_layer_ids is None and not any("." in t for t in target_modules):
        return list(target_modules)
    if encoder_layer_ids is None:
        encoder_layers = r"\d+"
    elif encoder_layer_ids:
        encoder_layers = "(?:" + "|".join(str(i) for i in sorted(encoder_layer_ids)) + ")"
    else:
        encoder_layers = None  # no encoder adapter at all
    parts = []
    for t in target_modules:
        side, _, name = t.rpartition(".")
        if side not in ("", "encoder", "decoder"):
            parts.append(rf".*{t}")  # a full-name regex, taken as given
        elif side == "" and encoder_layer_ids is None:
            parts.append(rf".*{name}")  # both sides, every layer
        else:
            if side in ("", "decoder"):
                parts.append(rf".*decoder\.layers\.\d+\..*{name}")
            if side in ("", "encoder") and encoder_layers is not None:
                parts.append(rf".*encoder\.layers\.{encoder_layers}\..*{name}")
    if not parts:
        raise ValueError(f"no adapter target left: --target_modules={','.join(target_modules)} names only encoder "
                         "modules and the encoder gets no adapter layer")
    return "^(?:" + "|".join(parts) + ")$"


def top_layer_ids(n_layers: int, top: int | None) -> list[int] | None:
    """Indices of the top ``top`` of ``n_layers`` layers (None = all layers, given as None)."""
    if top is None or top >= n_layers:
        return None
    return list(range(n_layers - max(0, top), n_layers))


def build_adapter(model: torch.nn.Module, options: LoraOptions, base_model_name: str):
    """Wrap ``model`` in a peft LoRA or AdaLoRA model; only adapter weights stay trainable.

    ``base_model_name`` (the name the user passed, e.g. ``openai/whisper-base``) is recorded in
    adapter_config.json so merge_lora.py needs only the adapter folder.
    """
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    encoder_ids = top_layer_ids(model.config.encoder_layers, options.encoder_layers)
    if options.encoder_layers is not None and options.encoder_layers > model.config.encoder_layers:
        logger.warning("adapters asked for the top %d encoder layers; this model has %d: all of them get one",
                       options.encoder_layers, model.config.encoder_layers)
    targets = peft_target_modules(options.target_modules, encoder_ids)
    if options.use_adalora:
        if not options.total_step or options.total_step <= 0:
            raise ValueError("AdaLoRA needs total_step = the number of optimizer steps (> 0)")
        total = options.total_step
        # budget schedule: warm up 10 % at init_r, prune ranks until 70 %, then fine-tune at target_r
        tinit, tfinal = max(1, int(0.1 * total)), max(1, int(0.3 * total))
        if tinit + tfinal >= total:  # checked before peft's own check, whose message names its parameters
            raise ValueError(f"AdaLoRA needs at least {ADALORA_MIN_STEPS} optimizer steps to prune its ranks, this "
                             f"run has {total}: raise --max_steps or --num_train_epochs, or train plain LoRA")
        config = AdaLoraConfig(
            init_r=options.adalora_init_r, target_r=options.adalora_target_r, lora_alpha=options.alpha,
            lora_dropout=options.dropout, target_modules=targets, total_step=total,
            tinit=tinit, tfinal=tfinal, deltaT=max(1, total // 50), beta1=0.85, beta2=0.85, orth_reg_weight=0.5,
        )
    else:
        config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                            target_modules=targets, bias="none")
    with _peft_on_transformers():
        peft_model = get_peft_model(model, config)  # names the model's folder (peft warns when a name is replaced)
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name  # what merge_lora.py loads
    trainable, total_params = peft_model.get_nb_trainable_parameters()
    logger.info("%s adapter: %d trainable of %d parameters (%.2f %%)", "AdaLoRA" if options.use_adalora else "LoRA",
                trainable, total_params, 100.0 * trainable / total_params)
    return peft_model


ADALORA_MIN_STEPS = 3  # its schedule (10 % at init_r, ranks pruned until 70 %) needs a step between the two phases


def save_adapter(peft_model, folder: str | os.PathLike) -> None:
    """Write the adapter (adapter_model.safetensors, adapter_config.json) of ``peft_model`` into ``folder``.

    The base model's embeddings are frozen and its vocabulary is never resized here, so they are not saved; peft's
    default ("auto") would find that out by asking the hub about ``base_model_name_or_path`` (a hub id such as
    ``openai/whisper-base``) at every checkpoint: a network request, and a warning when offline. AdaLoRA prunes ranks
    to 0, and peft takes those empty matrices for unsaved DeepSpeed/FSDP shards: that warning is left out.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        peft_model.save_pretrained(str(folder), save_embedding_layers=False)


def adalora_orth_regularization(peft_model, adapter: str = "default") -> torch.Tensor:
    """AdaLoRA's orthogonality penalty, ``orth_reg_weight`` × mean over adapter matrices of ‖PPᵀ − I‖_F.

    peft adds it only to a loss the model computes from ``labels``; a loop that computes its own loss
    (ours, in fp32 from the logits) adds it here. P is ``lora_A`` (r × in, so A·Aᵀ) or ``lora_B`` (out × r,
    so Bᵀ·B). Returns a scalar tensor (0 when there are no adapter matrices).
    """
    weight = float(peft_model.peft_config[adapter].orth_reg_weight)
    terms = []
    for name, p in peft_model.named_parameters():
        if p.requires_grad and f".{adapter}" in name and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
    if not terms or weight == 0:
        return torch.zeros(())
    return weight * torch.stack(terms).float().mean()


class AdapterError(ValueError):
    """An adapter folder is incomplete or damaged (a truncated copy, a disk error)."""


def check_adapter(adapter_dir: str | os.PathLike) -> None:
    """Cheap integrity check of an adapter folder, before any model is loaded: adapter_config.json parses and
    adapter_model.safetensors is complete (its header covers the whole file), or adapter_model.bin loads.

    Raises:
        FileNotFoundError: a file is missing.
        AdapterError: a file is damaged.
    """
    read_adapter_config(adapter_dir)
    _read_adapter_weights(adapter_weights_file(adapter_dir), keys_only=True)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft's files; .bin: older peft's default


def adapter_weights_file(adapter_dir: str | os.PathLike) -> str:
    """The adapter's weights file: adapter_model.safetensors, else adapter_model.bin (FileNotFoundError: neither)."""
    for name in ADAPTER_WEIGHTS:
        path = os.path.join(adapter_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (or .bin); is it a checkpoint folder?")


def _read_adapter_weights(path: str, keys_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an adapter weights file (``keys_only``: only check that it reads, for safetensors without
    loading them); AdapterError when it is damaged or truncated."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    damaged = f"{path}: damaged or truncated (%s); copy the checkpoint again, or use another checkpoint-<step>"
    if path.endswith(".safetensors"):
        try:
            if keys_only:
                with safe_open(path, framework="pt") as f:
                    f.keys()
                return {}
            return load_file(path)
        except SafetensorError as e:
            raise AdapterError(damaged % e) from e
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise AdapterError(damaged % e) from e
    if not isinstance(weights, dict):
        raise AdapterError(damaged % f"a {type(weights).__name__}, not a state dict")
    return weights


def load_adapter_weights(peft_model, adapter_dir: str | os.PathLike) -> None:
    """Load saved adapter weights into an already-built peft model (for resuming)."""
    from peft import set_peft_model_state_dict

    path = adapter_weights_file(adapter_dir)
    try:
        result = set_peft_model_state_dict(peft_model, _read_adapter_weights(path))
    except RuntimeError as e:
        if (first := _first_size_mismatch(e)) is None:
            raise
        raise AdapterError(f"{path}: adapter does not match the model ({first})") from None
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        hint = ("; it is an AdaLoRA adapter: resume it with --use_adalora=True"
                if any("lora_E" in k for k in unexpected) else "")
        raise ValueError(f"{path}: adapter does not match the model (unexpected keys, e.g. {unexpected[:3]}){hint}")


# adapter settings a resumed run must share with its checkpoint (adapter_config.json key → the flags that set it): the
# weights' shapes and modules, and the scale of the trained update (a new lora_alpha makes the output jump)
_RESUMED_SETTINGS = {"peft_type": "--use_adalora", "r": "--lora_r", "init_r": "--lora_r", "lora_alpha": "--lora_alpha",
                     "target_modules": "--target_modules / --lora_encoder_layers"}


def check_resumed_adapter(checkpoint: str | os.PathLike, wanted: dict,
                          module_names: Sequence[str] | None = None) -> None:
    """Raise :class:`AdapterError` where an adapter setting this run builds (``wanted``: adapter_config.json keys
    of ``_RESUMED_SETTINGS``, e.g. ``{"peft_type": "LORA", "r": 16, "lora_alpha": 64}``) differs from the one
    ``checkpoint`` was trained with; the message names the flags. ``target_modules`` are compared by the modules of
    ``module_names`` (the base model's) they select: the same modules named in another order (one regex of
    another order) are the same adapter."""
    saved = read_adapter_config(checkpoint)
    kind = saved.get("peft_type")
    if "peft_type" in wanted and kind != wanted["peft_type"] and kind in ("LORA", "ADALORA"):
        raise AdapterError(f"{checkpoint}: it is {'an AdaLoRA' if kind == 'ADALORA' else 'a plain LoRA'} checkpoint: "
                           f"resume it with --use_adalora={kind == 'ADALORA'}")

    def same(key: str) -> bool:
        a, b = saved.get(key), wanted[key]
        if key == "target_modules" and module_names is not None and a is not None:
            return _selected(a, module_names) == _selected(b, module_names)
        if isinstance(a, (list, tuple, set)) and isinstance(b, (list, tuple, set)):
            return set(a) == set(b)
        return a == b

    differ = [f"{_RESUMED_SETTINGS[k]} ({k} {saved.get(k)!r} there, {wanted[k]!r} here)" for k in wanted if not same(k)]
    if differ:
        raise AdapterError(f"{checkpoint}: its adapter was trained with other settings: {'; '.join(differ)}. Resume "
                           "with the flags it was trained with, or start a new run in another --output_dir")


def _first_size_mismatch(error: RuntimeError) -> str | None:
    """The first line of torch's "size mismatch for …" error (one per layer: 153 lines), or None for another error."""
    return next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), None)


def _selected(targets: str | Sequence[str], module_names: Sequence[str]) -> set[str]:
    """The module names peft puts an adapter on for ``target_modules`` ``targets``: a regex matches a whole name, a
    list entry a name or its last parts."""
    if isinstance(targets, str):
        return {n for n in module_names if re.fullmatch(targets, n)}
    return {n for n in module_names if any(n == t or n.endswith("." + t) for t in targets)}


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """The adapter_config.json of an adapter folder."""
    path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    if not os.path.isdir(adapter_dir):
        parent = os.path.dirname(os.path.normpath(adapter_dir))
        there = sorted(n for n in os.listdir(parent) if n.startswith("checkpoint-")) if os.path.isdir(parent) else []
        raise FileNotFoundError(f"{adapter_dir}: no such folder" + (f" (there: {', '.join(there)})" if there else ""))
    if not os.path.isfile(path):
        inner = os.path.join(adapter_dir, "adapter_model")  # older peft/upstream checkpoints kept the adapter there
        if os.path.isfile(os.path.join(inner, ADAPTER_CONFIG)):
            raise FileNotFoundError(f"{adapter_dir}: its adapter is in the subfolder adapter_model/: pass "
                                    f"{os.path.join(os.fspath(adapter_dir), 'adapter_model')}")
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG}; pass a LoRA checkpoint folder "
                                "such as output/whisper-tiny/checkpoint-best")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: damaged, not valid JSON ({e}); copy the checkpoint again") from e
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: damaged, not a JSON object; copy the checkpoint again")
    return config


def merge_adapter(base_model: torch.nn.Module, adapter_dir: str | os.PathLike) -> torch.nn.Module:
    """Fold the adapter in ``adapter_dir`` into ``base_model``; returns a plain transformers model."""
    from peft import PeftModel

    misfit = (f"{adapter_dir}: the adapter does not fit this base model (d_model {base_model.config.d_model}, "
              f"{base_model.config.encoder_layers} encoder layers)")
    with _peft_on_transformers(), warnings.catch_warnings():
        # AdaLoRA's rank pattern is keyed by parameter (…q_proj.lora_E), which peft's check compares with module
        # names: it listed all 96 keys as "ignored" while the merge applies them (the saved adapter holds the
        # kept ranks)
        warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match any targeted",
                                category=RuntimeWarning)
        try:
            peft_model = PeftModel.from_pretrained(base_model, os.fspath(adapter_dir))
        except RuntimeError as e:
            if (first := _first_size_mismatch(e)) is None:
                raise
            raise ValueError(f"{misfit}: {first}; merge it into the model it was trained on") from None
        except AttributeError as e:  # AdaLoRA sizes its layers by rank pattern first: "ModuleList has no attribute `4`"
            if not re.search(r"has no attribute `\d+`", str(e)):
                raise
            raise ValueError(f"{misfit}: it has a layer the model has not ({e}); merge it into the model it was "
                             "trained on") from None
    return peft_model.merge_and_unload()
