"""The fine-tuning loop: accelerate-driven training, generate-based eval, atomic checkpoints, resume.

One loop serves a single process, ``torchrun`` (DDP, gloo on CPU / nccl on GPU) and
``accelerate launch`` (including DeepSpeed ZeRO-2 from a config file). Layout of a run folder::

    <run_dir>/checkpoint-<step>/   adapter + processor + optimizer/scheduler + trainer_state.json
    <run_dir>/checkpoint-best/     adapter + processor, best eval CER/WER so far
    <run_dir>/checkpoint-final/    adapter + processor after the last step
    <run_dir>/runs/                TensorBoard events
    <run_dir>/training_curves.png  loss and eval error vs step

Every checkpoint is written to a temporary folder and renamed into place, so a process killed
mid-save (even by SIGKILL) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from utils.io import publish_dir, recover_displaced, write_json_atomic
from utils.lora import adalora_orth_regularization, save_adapter
from utils.text import ErrorCounts, count_errors
from utils.transcribe import token_budget

logger = logging.getLogger(__name__)

ADALORA_STATE_FILE = "adalora_state.pt"  # full-rank adapter + allocator statistics, in AdaLoRA checkpoint-<step>
STATE_FILE = "trainer_state.json"
DEEPSPEED_STATE_DIR = "deepspeed"  # accelerate save_state() of a DeepSpeed run: every rank's optimizer partition
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class TrainOptions:
    """Loop settings; steps are optimizer steps (one step = ``gradient_accumulation_steps`` batches)."""

    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 0  # > 0 overrides num_train_epochs
    num_train_epochs: float = 3.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int = 3
    metric: str = "cer"
    language: str | None = None  # Whisper code used to force eval decoding (None = per item / auto)
    task: str = "transcribe"
    generation_max_length: int = 0  # max new tokens when evaluating; 0 = sized by clip duration (token_budget)
    num_workers: int = 1
    seed: int = 42
    use_adalora: bool = False
    cache_encoder: bool = False  # encoder inputs fixed (no augmentation): cache the frozen bottom layers' output
    encoder_cache_gb: float = 4.0  # memory for cached encoder states (0 = never cache)
    eval_at_start: bool = False  # score the untouched base model at step 0 (the baseline on the curve)


def configure_deepspeed(config: dict[str, Any], options: TrainOptions) -> None:
    """Fill a DeepSpeed config (accelerate's ``deepspeed_plugin.deepspeed_config``) from this run's flags before
    ``accelerator.prepare``: its "auto" per-GPU batch is taken from a DataLoader given to prepare(), which this
    trainer builds per epoch instead (accelerate refused to start), and DeepSpeed clips gradients in its own step,
    where accelerate's clip_grad_norm_ does nothing (``--max_grad_norm`` gave way to the config's clipping).

    Raises:
        ValueError: settings DeepSpeed cannot train with here: accumulation (DeepSpeed steps and scales the loss at
            every backward it is not told to accumulate, and this loop already takes one mean over a group), AdaLoRA
            (its rank budget reads each step's gradients, which ZeRO keeps partitioned).
    """
    if options.gradient_accumulation_steps != 1:
        raise ValueError("DeepSpeed: keep --gradient_accumulation_steps=1 (and gradient_accumulation_steps: 1 in the "
                         "accelerate config); scale the batch with --per_device_train_batch_size and GPUs")
    if config.get("gradient_accumulation_steps", 1) not in (1, "auto"):
        raise ValueError(f"DeepSpeed: the accelerate config's gradient_accumulation_steps is "
                         f"{config['gradient_accumulation_steps']}; set it to 1 (this loop accumulates no batches "
                         "under DeepSpeed)")
    if options.use_adalora:
        raise ValueError("DeepSpeed: AdaLoRA's rank budget needs each step's gradients, which ZeRO partitions: "
                         "train AdaLoRA with torchrun or accelerate launch without DeepSpeed, or plain LoRA here")
    config["train_micro_batch_size_per_gpu"] = options.per_device_train_batch_size
    config["gradient_accumulation_steps"] = 1
    config["gradient_clipping"] = options.max_grad_norm  # 0: none, as --max_grad_norm=0 means without DeepSpeed


@dataclass
class TrainerState:
    """What a checkpoint records about the run (saved as trainer_state.json)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches this rank consumed in ``epoch``
    max_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    metric: str = "cer"
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # how the training set was cut into batches (``Trainer.data_layout``); None in checkpoints written before it
    data: dict[str, Any] | None = None
    # the eval set the best metric was measured on (:meth:`EvalSet.fingerprint`); None in checkpoints before it
    eval_data: str | None = None
    # which run wrote it (a fresh start draws one; resuming keeps it) and when (time.time()): several runs in one
    # --output_dir are told apart by them; None in checkpoints before them
    run_id: str | None = None
    saved_at: float | None = None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainerState:
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


def _hf_trainer_state(path: Path) -> bool:
    """Whether the JSON file ``path`` is a transformers Trainer's trainer_state.json."""
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    return isinstance(state, dict) and {"best_model_checkpoint", "log_history", "global_step"} <= state.keys()


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, sharded across ranks, that can start mid-epoch.

    The order depends only on (seed, epoch), so a resumed run skips exactly the items it had seen.
    Each rank gets ``ceil(size / world_size)`` items (the order wraps around to even them out).
    """

    def __init__(self, size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                 shuffle: bool = True) -> None:
        g = torch.Generator().manual_seed(seed + 1000003 * epoch)
        order = torch.randperm(size, generator=g).tolist() if shuffle else list(range(size))
        total = math.ceil(size / world_size) * world_size
        order = (order * math.ceil(total / size))[:total]
        self.indices = order[rank::world_size][skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------- checkpoints

def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``checkpoint-<step>`` folders of a run that hold a trainer state, sorted by step."""
    run_dir = Path(run_dir)
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-<step>`` saved last in ``run_dir`` (its trainer state's ``saved_at``; the highest
    step among checkpoints without one), or None. By step alone, a run started in a folder that still held a
    longer earlier run resumed from the earlier run's last checkpoint, past its own --max_steps."""
    def saved_at(path: Path) -> float:
        try:
            with open(path / STATE_FILE, encoding="utf-8") as f:
                value = json.load(f).get("saved_at")
        except (OSError, ValueError, AttributeError):
            return -math.inf
        return float(value) if isinstance(value, (int, float)) else -math.inf

    found = [(saved_at(path), step, path) for step, path in list_checkpoints(run_dir)]
    return max(found, key=lambda f: f[:2])[2] if found else None


def check_checkpoint(checkpoint: str | os.PathLike, *, adalora: bool) -> None:
    """Cheap integrity check of a ``checkpoint-<step>`` to resume from, before any model is loaded: the trainer
    state parses, the adapter is complete, and every ``*.pt`` state file is a complete archive.

    Raises:
        FileNotFoundError: not a resumable checkpoint (a file is missing).
        AdapterError (a ValueError): a file is damaged; the message names it and the fix.
    """
    import zipfile

    from utils.lora import AdapterError, check_adapter

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such folder; give a checkpoint-<step> folder of the run, or auto "
                                "for its newest")
    state_path = checkpoint / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a resumable checkpoint (no {STATE_FILE})")
    fix = ("copy it again, or resume from an earlier checkpoint-<step> of the run "
           "(--resume_from_checkpoint=<run>/checkpoint-<step>)")
    try:
        TrainerState.load(state_path)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        if isinstance(e, TypeError) and _hf_trainer_state(state_path):
            raise AdapterError(f"{checkpoint}: written by transformers' Trainer (the original Whisper-Finetune's "
                               "finetune.py), whose optimizer state and data position this toolkit cannot resume; "
                               f"merge its adapter (python merge_lora.py --lora_model={checkpoint}) or start a new "
                               "run") from e
        raise AdapterError(f"{state_path}: damaged ({e}); {fix}") from e
    if not adalora:  # an AdaLoRA checkpoint resumes from adalora_state.pt, checked below
        check_adapter(checkpoint)
    for path in sorted(checkpoint.glob("*.pt")):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            raise AdapterError(f"{path}: damaged or truncated ({e}); {fix}") from e
        if bad is not None:
            raise AdapterError(f"{path}: damaged (record {bad} fails its checksum); {fix}")


def recover_interrupted_saves(run_dir: str | os.PathLike) -> None:
    """Clean up after a kill during a save: restore a displaced checkpoint, drop temporary folders."""
    recover_displaced(run_dir)


def _rotate_checkpoints(run_dir: Path, limit: int, step: int) -> None:
    """Keep the ``limit`` newest checkpoints up to ``step`` (this run's); later-numbered ones, left by an earlier
    run in the same folder, are never deleted (they would have pushed out every checkpoint of this run)."""
    if limit <= 0:
        return
    for _, path in [(s, p) for s, p in list_checkpoints(run_dir) if s <= step][:-limit]:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def greedy_decode(model, encoder_states: torch.Tensor, prompt: list[int], *, end_of_text: int,
                  suppress_tokens: list[int], begin_suppress_tokens: list[int], max_new_tokens: int,
                  no_speech: int | None = None) -> torch.Tensor:
    """Greedy Whisper decoding with a KV cache, text tokens only (no timestamps).

    A lean loop (one decoder call per token) instead of ``generate``, whose per-step overhead
    dominates on CPU. Special tokens above ``<|endoftext|>`` are never produced.

    Args:
        model: Whisper (or a peft model around one) accepting ``encoder_outputs``.
        encoder_states: (batch, frames, d_model).
        prompt: e.g. ``<|startoftranscript|> <|zh|> <|transcribe|> <|notimestamps|>``, ``<|startoftranscript|>``
            first.
        no_speech: the ``<|nospeech|>`` token's id: a row is silence, its text dropped, as inference drops it
            (``utils.transcribe``: P(no speech) at ``<|startoftranscript|>`` above the no-speech threshold and the
            text's average log-probability below the log-probability threshold: ``is_silence`` with DecodeOptions'
            defaults).

    Returns:
        (batch, n) generated ids after the prompt; finished rows (and silent ones) are padded with ``end_of_text``.
    """
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    batch = encoder_states.shape[0]
    device = encoder_states.device
    step_input = torch.tensor([prompt] * batch, dtype=torch.long, device=device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    generated = torch.full((batch, max_new_tokens), end_of_text, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    suppress = torch.tensor(sorted(set(suppress_tokens)), dtype=torch.long, device=device)
    begin = torch.tensor(sorted(set(begin_suppress_tokens)), dtype=torch.long, device=device)
    n = 0
    no_speech_prob = torch.zeros(batch, device=device)
    logprob_sum = torch.zeros(batch, device=device)  # of the tokens chosen, the end of text included
    for t in range(max_new_tokens):
        out = model(encoder_outputs=(encoder_states,), decoder_input_ids=step_input, cache=cache, use_cache=True)
        cache = out.cache
        if t == 0 and no_speech is not None:
            no_speech_prob = out.logits[:, 0].float().softmax(-1)[:, no_speech]
        logits = out.logits[:, -1].float()
        logits[:, end_of_text + 1:] = -float("inf")
        if suppress.numel():
            logits[:, suppress[suppress < logits.shape[1]]] = -float("inf")
        if t == 0 and begin.numel():
            logits[:, begin] = -float("inf")
        next_ids = logits.argmax(dim=-1).masked_fill(done, end_of_text)
        chosen = logits.log_softmax(-1).gather(1, next_ids[:, None])[:, 0]
        logprob_sum += chosen.masked_fill(done, 0.0)
        generated[:, t] = next_ids
        n = t + 1
        done |= next_ids == end_of_text
        if bool(done.all()):
            break
        step_input = next_ids[:, None]
    if no_speech is not None:
        from utils.transcribe import DecodeOptions, is_silence

        counted = (generated[:, :n] != end_of_text).sum(dim=1) + 1  # the text tokens and the end of text
        for row, (avg, p) in enumerate(zip((logprob_sum / counted).tolist(), no_speech_prob.tolist())):
            if is_silence(avg, p, DecodeOptions()):
                generated[row] = end_of_text
    return generated[:, :n]


@torch.no_grad()
def detect_languages(model, encoder_states: torch.Tensor, tokens: Any) -> list[str]:
    """The language of each row (a code, e.g. "zh"): the language token the decoder rates highest right after
    ``<|startoftranscript|>``, as generate() and inference detect it. ``encoder_states``: (batch, frames, d_model);
    ``tokens``: utils.train_data.LabelTokens of a multilingual model."""
    start = torch.full((encoder_states.shape[0], 1), tokens.start_of_transcript, dtype=torch.long,
                       device=encoder_states.device)
    logits = model(encoder_outputs=(encoder_states,), decoder_input_ids=start).logits[:, -1].float()
    codes = list(tokens.languages)
    ids = torch.tensor([tokens.languages[c] for c in codes], device=logits.device)
    return [codes[i] for i in logits[:, ids].argmax(-1).tolist()]


@dataclass(frozen=True)
class EvalSet:
    """What evaluation needs and nothing more: the items (``{"input_features", "index"}``), and per item index its
    reference text, language (None = the run's) and duration (s); plus the label tokens of the tokenizer."""

    items: Any  # a dataset: len() and [i]
    references: list[str]
    languages: list[str | None]
    durations: list[float]
    tokens: Any  # utils.train_data.LabelTokens

    @classmethod
    def from_dataset(cls, dataset: Any, limit: int = 0) -> EvalSet:
        """From a SpeechDataset (its first ``limit`` items when > 0)."""
        n = len(dataset) if limit <= 0 else min(limit, len(dataset))
        records = [dataset.record(i) for i in range(n)]
        items = dataset if n == len(dataset) else torch.utils.data.Subset(dataset, range(n))
        return cls(items, [r.sentence for r in records], [r.language for r in records],
                   [r.duration for r in records], dataset.tokens)

    def __len__(self) -> int:
        return len(self.references)

    def fingerprint(self) -> str:
        """16 hex digits that change with the eval set's references, languages or durations (its clips' order)."""
        import hashlib

        described = json.dumps([self.references, self.languages, [round(d, 3) for d in self.durations]],
                               ensure_ascii=False)
        return hashlib.sha256(described.encode("utf-8")).hexdigest()[:16]


@torch.no_grad()
def evaluate(model, eval_set: EvalSet, collator, tokenizer, *, accelerator, language: str | None, task: str,
             metric: str,
             batch_size: int, max_new_tokens: int, show_progress: bool = True, encoder_states=None,
             generation_config=None) -> tuple[float, list[str]]:
    """Transcribe ``eval_set`` (sharded across ranks) greedily with language/task forced, and score it.

    ``encoder_states(indices, features) -> (batch, frames, d_model)``, when given, supplies (cached)
    encoder outputs. Items whose language is unknown (no item or run language) are read in the language the decoder
    detects (:func:`detect_languages`); each language's items of a batch are decoded together by
    :func:`greedy_decode`, which drops a no-speech item's text as inference does; a loop that ends a text is cut after
    its first unit, as inference cuts it (a looping checkpoint scored CER 3.3 here and 0.4 in ``evaluation.py``).

    Returns:
        (corpus CER or WER over the whole eval set, hypotheses in dataset order).
    """
    from accelerate.utils import gather_object

    from utils.transcribe import cut_tail_loop

    unwrapped = accelerator.unwrap_model(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    gen = generation_config if generation_config is not None else base.generation_config
    tokens = eval_set.tokens
    was_training = unwrapped.training
    unwrapped.eval()
    mine = list(range(accelerator.process_index, len(eval_set), accelerator.num_processes))
    results: list[tuple[int, str]] = []
    bar = tqdm(range(0, len(mine), batch_size), desc="eval", leave=False,
               disable=not show_progress or not accelerator.is_local_main_process)
    for start in bar:
        items = [eval_set.items[i] for i in mine[start: start + batch_size]]
        feats = torch.from_numpy(np.stack([it["input_features"] for it in items])).to(accelerator.device,
                                                                                       feature_dtype(base))
        # like inference: room for the densest speech of the longest clip, within the decoder's context
        budget = max_new_tokens if max_new_tokens > 0 else token_budget(
            max(eval_set.durations[it["index"]] for it in items), timestamps=False,
            limit=base.config.max_target_positions - len(tokens.prompt(None, task)) - 1)
        texts = [""] * len(items)
        with accelerator.autocast():
            if encoder_states is not None:
                states = encoder_states([it["index"] for it in items], feats)
            else:
                states = base.get_encoder()(feats).last_hidden_state
            langs = ([_code(eval_set.languages[it["index"]]) or language for it in items] if tokens.multilingual
                     else ["en"] * len(items))
            unknown = [j for j, code in enumerate(langs) if code is None]
            if unknown:
                for j, code in zip(unknown, detect_languages(unwrapped, states[unknown], tokens)):
                    langs[j] = code
            for code in dict.fromkeys(langs):  # each language's rows, one decode
                rows = [j for j, c in enumerate(langs) if c == code]
                # <|endoftext|> stays allowed at the first step: right after the forced prompt it is what a
                # no-speech clip is trained to say (generate's begin suppression would count it an insertion)
                sequences = greedy_decode(unwrapped, states[rows], tokens.prompt(code, task),
                                          end_of_text=tokens.end_of_text,
                                          suppress_tokens=list(gen.suppress_tokens or []),
                                          begin_suppress_tokens=[t for t in gen.begin_suppress_tokens or []
                                                                 if t != tokens.end_of_text],
                                          max_new_tokens=budget, no_speech=tokens.no_speech)
                for j, ids in zip(rows, sequences.tolist()):  # a loop that ends the text cut, as inference cuts it
                    ids = [t for t in ids if t != tokens.end_of_text]
                    ids = cut_tail_loop(ids, False, at_budget=len(ids) >= budget - 4)
                    texts[j] = tokenizer.decode(ids, skip_special_tokens=True)
        results.extend((it["index"], text.strip()) for it, text in zip(items, texts))
    gathered = sorted(dict(gather_object(results)).items())
    if was_training:
        unwrapped.train()
    # scored like evaluation.py: English (the item's language, else the run's; a translation's text) through
    # Whisper's normaliser, Chinese with its numbers spelled
    total = ErrorCounts(0, 0, 0, 0)
    for index, hyp in gathered:
        spoken = ((_code(eval_set.languages[index]) or language) if tokens.multilingual and task != "translate"
                  else "en")
        total = total + count_errors(eval_set.references[index], hyp, metric, language=spoken)
    return total.rate, [text for _, text in gathered]


def feature_dtype(model) -> torch.dtype:
    """The dtype the model's encoder takes its log-mel features in (bf16 when the base weights are bf16)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_encoder().conv1.weight.dtype


def _code(language: str | None) -> str | None:
    from utils.languages import language_code

    return language_code(language) if language else None


# ---------------------------------------------------------------- frozen encoder

def frozen_encoder_layers(encoder) -> int | None:
    """How many of the encoder's bottom layers have no trainable parameter (all of them: ``len(layers)``).

    None when the convolution stem or the positions train, so no layer's output is fixed.
    """
    def trains(module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    if trains(encoder.conv1) or trains(encoder.conv2) or trains(encoder.embed_positions):
        return None
    for i, layer in enumerate(encoder.layers):
        if trains(layer):
            return i
    return len(encoder.layers)


def encoder_is_deterministic(config) -> bool:
    """No dropout or layer drop in the encoder: a frozen layer's output depends on its input only."""
    return all(float(getattr(config, k, 0.0) or 0.0) == 0.0
               for k in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop"))


class EncoderCache:
    """The encoder run as a frozen bottom (cached) plus a trained top.

    With adapters only in the top layers (or only in the decoder) and no augmentation, the output of the frozen
    bottom layers of a clip never changes: it is computed once per dataset item without gradients and kept while
    it fits in ``max_bytes``; each call then runs only the top layers (with gradients when training) and the
    final layer norm. ``frozen_layers`` = ``len(encoder.layers)`` caches everything but the layer norm.
    """

    def __init__(self, encoder, *, accelerator, max_bytes: float, frozen_layers: int) -> None:
        if not 0 < frozen_layers <= len(encoder.layers):
            raise ValueError(f"frozen_layers must be 1..{len(encoder.layers)}, got {frozen_layers}")
        self.encoder = encoder
        self.accelerator = accelerator
        self.max_bytes = max_bytes
        self.frozen_layers = frozen_layers
        self.used = 0
        self.states: dict[int, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def bottom(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) log-mel features → (batch, frames / 2, d_model) after the frozen layers."""
        enc = self.encoder
        x = features.to(self.accelerator.device, enc.conv1.weight.dtype)
        with self.accelerator.autocast():
            x = F.gelu(enc.conv2(F.gelu(enc.conv1(x)))).permute(0, 2, 1)
            x = x + enc.embed_positions.weight[: x.shape[1]]
            for layer in enc.layers[: self.frozen_layers]:
                x = _layer_output(layer(x, None))
        return x

    def top(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, frames, d_model) states after the frozen layers → the encoder's output (same shape)."""
        enc = self.encoder
        with self.accelerator.autocast():
            for layer in enc.layers[self.frozen_layers:]:
                if enc.training and enc.layerdrop > 0 and float(torch.rand([])) < enc.layerdrop:
                    continue
                states = _layer_output(layer(states, None))
            return enc.layer_norm(states)

    def __call__(self, indices: list[int], features: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) features of items ``indices`` → (batch, frames / 2, d_model) encoder output."""
        missing = [j for j, i in enumerate(indices) if int(i) not in self.states]
        computed: dict[int, torch.Tensor] = {}
        if missing:
            self.misses += len(missing)
            out = self.bottom(features[missing])
            for row, j in enumerate(missing):
                state = out[row].detach()
                computed[j] = state
                if self.used + state.numel() * state.element_size() <= self.max_bytes:
                    self.states[int(indices[j])] = state
                    self.used += state.numel() * state.element_size()
        self.hits += len(indices) - len(missing)
        return self.top(torch.stack([computed[j] if j in computed else self.states[int(i)]
                                     for j, i in enumerate(indices)]))


def _layer_output(out) -> torch.Tensor:
    """An encoder layer returns its hidden states, or a tuple starting with them (older transformers)."""
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- training

def items_per_batch(dataset: Any, options: TrainOptions) -> int:
    """Dataset items one batch loads: 1 for a dataset whose items are whole batches (``ClipBatches``)."""
    return 1 if getattr(dataset, "batched", False) else options.per_device_train_batch_size


def _steps_per_epoch(n_items: int, options: TrainOptions, world_size: int, per_batch: int) -> tuple[int, int]:
    batches = math.ceil(math.ceil(n_items / world_size) / per_batch)
    return batches, math.ceil(batches / options.gradient_accumulation_steps)


def total_training_steps(dataset: Any, options: TrainOptions, world_size: int) -> int:
    """Optimizer steps of the run on ``dataset``: ``max_steps`` if set, else epochs × steps per epoch."""
    if options.max_steps > 0:
        return options.max_steps
    _, per_epoch = _steps_per_epoch(len(dataset), options, world_size, items_per_batch(dataset, options))
    return max(1, math.ceil(options.num_train_epochs * per_epoch))


@dataclass(frozen=True)
class TrainResult:
    state: TrainerState
    run_dir: Path
    seconds: float
    train_samples: int  # clips processed by all ranks in this run (a packed window counts its clips)
    steps: int = 0  # optimizer steps taken in this run (a resumed run started after the checkpoint's)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Runs the loop for an already-built peft model; see ``train``."""

    def __init__(self, model, *, accelerator, processor, train_dataset, eval_set: EvalSet, collator,
                 options: TrainOptions, run_dir: str | os.PathLike, generation_config=None) -> None:
        self.accelerator = accelerator
        self.processor = processor
        self.train_dataset = train_dataset
        self.eval_set = eval_set
        self.collator = collator
        self.options = options
        self.run_dir = Path(run_dir)
        self.generation_config = generation_config
        self.world_size = accelerator.num_processes
        # a stream (utils.train_data.StreamingSpeechDataset) never ends: max_steps sets the run, one "epoch"
        self.streaming = isinstance(train_dataset, torch.utils.data.IterableDataset)
        self.per_batch = items_per_batch(train_dataset, options)  # dataset items a batch loads
        if self.streaming:
            if options.max_steps <= 0:
                raise ValueError("a streamed training set has no length: give max_steps")
            self.batches_per_epoch, self.total_steps = sys.maxsize, options.max_steps
        else:
            self.batches_per_epoch, _ = _steps_per_epoch(len(train_dataset), options, self.world_size,
                                                         self.per_batch)
            self.total_steps = total_training_steps(train_dataset, options, self.world_size)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters; build the adapter first")
        optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=options.weight_decay)
        if 0 < self.total_steps <= options.warmup_steps:  # a small set's run with the default warm-up of 50
            logger.warning("warmup_steps=%d is not shorter than this run's %d optimizer steps: the learning rate "
                           "rises all run (to %.1f%% of learning_rate=%g at the last step) and never falls; give "
                           "--warmup_steps=%d (a tenth of the run) or train more steps", options.warmup_steps,
                           self.total_steps, 100 * self.total_steps / (self.total_steps + 1), options.learning_rate,
                           self.total_steps // 10)
        # The scheduler is NOT given to accelerator.prepare: its wrapper steps it once per process on every
        # optimizer step (it assumes an accelerate-sharded DataLoader); our steps already count per process,
        # so it is stepped here once per optimizer step that really ran.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_then_linear_decay(min(options.warmup_steps, self.total_steps), self.total_steps))
        from accelerate.utils import DistributedType

        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, options)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.data_layout = self._data_layout()
        self.state = TrainerState(max_steps=self.total_steps, metric=options.metric, data=self.data_layout,
                                  eval_data=eval_set.fingerprint(), run_id=uuid.uuid4().hex)
        self._deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.writer = None
        # AdaLoRA: whether the final rank budget is fixed (None: not known yet, see _allocate_ranks)
        self._final_ranks_fixed: bool | None = None
        self.train_encoder, self.eval_encoder = self._encoder_caches(options)

    def _encoder_caches(self, options: TrainOptions) -> tuple[EncoderCache | None, EncoderCache | None]:
        """(train, eval) caches of the frozen bottom encoder layers' output, or (None, None)."""
        base = self.accelerator.unwrap_model(self.model).get_base_model()
        encoder = base.get_encoder()
        frozen = frozen_encoder_layers(encoder)
        n = len(encoder.layers)
        if not options.cache_encoder or not frozen:
            if frozen:
                logger.info("encoder layers 1-%d have no adapter: they run without gradients", frozen)
            return None, None
        budget = options.encoder_cache_gb * 1024 ** 3
        if not encoder_is_deterministic(base.config):
            logger.warning("the encoder has dropout or layer drop: the frozen layers' output is not cached")
            budget = 0
        what = ("the whole encoder is frozen (adapters only in the decoder)" if frozen == n else
                f"encoder layers 1-{frozen} of {n} are frozen (adapters in the top {n - frozen})")
        logger.info("%s: their output is computed once per clip without gradients and cached (up to %.1f GB "
                    "per dataset)", what, budget / 1024 ** 3)
        train = EncoderCache(encoder, accelerator=self.accelerator, max_bytes=budget, frozen_layers=frozen)
        if self.streaming:  # a stream never shows an item twice: nothing to reuse (the eval set is cached)
            train = None
        return train, EncoderCache(encoder, accelerator=self.accelerator, max_bytes=budget, frozen_layers=frozen)

    # -- persistence

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (torch's CPU one, CUDA's where there is one, numpy's global one), in rank order (all
        ranks call this)."""
        from accelerate.utils import gather_object

        _, keys, position, has_gauss, gauss = np.random.get_state()  # SpecAugment's masks (transformers) draw on it
        mine = {"rank": self.accelerator.process_index, "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}}
        return sorted(gather_object([mine]), key=lambda state: state["rank"])

    def _save(self, name: str, *, full: bool) -> Path:
        """Write checkpoint ``name`` atomically (main process); ``full`` adds optimizer/scheduler state, the
        fp16 loss scaler and every rank's RNG state."""
        acc = self.accelerator
        target = self.run_dir / name
        rng_states = self._rng_states() if full else None
        tmp = self.run_dir / f".tmp-{name}"  # one name for every rank (DeepSpeed: each rank writes its shard)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        try:
            self._write_checkpoint(tmp, target, full, rng_states)
        except BaseException:  # Ctrl-C or a full disk while saving: no .tmp-checkpoint-N left behind
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        return target

    def _write_checkpoint(self, tmp: Path, target: Path, full: bool, rng_states: Any) -> None:
        """:meth:`_save`'s writing into ``tmp`` and its publishing as ``target``."""
        acc = self.accelerator
        sharded = full and self._deepspeed
        if sharded:  # ZeRO splits the optimizer state across ranks: every rank saves its own partition
            acc.wait_for_everyone()
            acc.save_state(str(tmp / DEEPSPEED_STATE_DIR))
            acc.wait_for_everyone()
        if acc.is_main_process:
            save_adapter(acc.unwrap_model(self.model), tmp)
            self.processor.save_pretrained(tmp)
            if self.generation_config is not None:
                self.generation_config.save_pretrained(tmp)
            if full:
                if not sharded:
                    torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save(rng_states, tmp / "rng_state.pt")
                if acc.scaler is not None:  # fp16: the loss scale it has learned
                    torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
                if self.options.use_adalora:
                    torch.save(self._adalora_state(), tmp / ADALORA_STATE_FILE)
            self.state.saved_at = time.time()
            self.state.save(tmp / STATE_FILE)
            publish_dir(tmp, target, overwrite=True)
            if full:
                _rotate_checkpoints(self.run_dir, self.options.save_total_limit, self.state.global_step)

    def _adalora_state(self) -> dict[str, Any]:
        """What resuming AdaLoRA needs beyond the optimizer: the full-rank adapter tensors (the saved adapter is
        cut to the kept ranks), the rank pattern, and the rank allocator's importance statistics."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        allocator = unwrapped.base_model.rankallocator
        return {
            "weights": {n: p.detach().cpu() for n, p in unwrapped.named_parameters() if p.requires_grad},
            "rank_pattern": unwrapped.peft_config["default"].rank_pattern,
            "final_ranks_fixed": self._final_ranks_fixed,  # None: not known yet (peft's count decides on resume)
            **{name: {k: v.detach().cpu() for k, v in getattr(allocator, name).items()}
               for name in ("ipt", "exp_avg_ipt", "exp_avg_unc")},
        }

    def _allocate_ranks(self, unwrapped) -> None:
        """AdaLoRA's rank budgeting after an optimizer step that ran. peft fixes the final ranks only at exactly
        step ``total_step - tfinal`` and masks with the last pattern after it; when fp16 skipped that step (inf/nan
        gradients), the final ranks are fixed at the next step that runs instead of never."""
        config = unwrapped.peft_config["default"]
        final = config.total_step - config.tfinal
        if self._final_ranks_fixed is None:  # a fresh run, or a checkpoint from before the flag: peft's own count
            self._final_ranks_fixed = self.state.global_step > final
        step = final if self.state.global_step > final and not self._final_ranks_fixed else self.state.global_step
        unwrapped.base_model.update_and_allocate(step)
        if step == final:
            self._final_ranks_fixed = True

    def _restore_adalora(self, state: dict[str, Any], source: Path) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        result = unwrapped.load_state_dict(state["weights"], strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{source}: AdaLoRA state does not match the model (e.g. {result.unexpected_keys[:3]})")
        unwrapped.peft_config["default"].rank_pattern = state["rank_pattern"]
        self._final_ranks_fixed = state.get("final_ranks_fixed")  # None in checkpoints written before it
        allocator = unwrapped.base_model.rankallocator
        device = self.accelerator.device
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})

    def resume(self, checkpoint: str | os.PathLike) -> None:
        """Restore adapter weights, optimizer, scheduler, step, data position and best metric."""
        from utils.lora import load_adapter_weights

        checkpoint = Path(checkpoint)
        state_path = checkpoint / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{checkpoint}: not a resumable checkpoint (no {STATE_FILE})")
        if self.options.use_adalora:
            adalora_path = checkpoint / ADALORA_STATE_FILE
            if not adalora_path.is_file():
                from utils.lora import AdapterError, read_adapter_config

                try:
                    plain = read_adapter_config(checkpoint).get("peft_type") == "LORA"
                except (AdapterError, FileNotFoundError):
                    plain = False
                hint = ("it is a plain LoRA checkpoint: resume it with --use_adalora=False" if plain else
                        "an AdaLoRA run resumes from a checkpoint-<step> folder of an AdaLoRA run")
                raise FileNotFoundError(f"{checkpoint}: no {ADALORA_STATE_FILE}; {hint}")
            self._restore_adalora(torch.load(adalora_path, map_location="cpu", weights_only=True), adalora_path)
        else:
            load_adapter_weights(self.accelerator.unwrap_model(self.model), checkpoint)
        opt_path, sharded = checkpoint / "optimizer.pt", checkpoint / DEEPSPEED_STATE_DIR
        if self._deepspeed:
            if not sharded.is_dir():
                raise FileNotFoundError(f"{checkpoint}: no {DEEPSPEED_STATE_DIR}/ (the per-rank optimizer state of a "
                                        "DeepSpeed run); resume a DeepSpeed run from its own checkpoint-<step>")
            self.accelerator.load_state(str(sharded))
        else:
            if not opt_path.is_file():
                hint = (" (a DeepSpeed checkpoint: resume it with accelerate launch and the same DeepSpeed config)"
                        if sharded.is_dir() else "; resume from a checkpoint-<step> folder")
                raise FileNotFoundError(f"{checkpoint}: no optimizer.pt{hint}")
            self.optimizer.load_state_dict(torch.load(opt_path, map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        self._apply_hyperparameters(checkpoint)
        self._restore_rng(checkpoint / "rng_state.pt")
        scaler = checkpoint / "scaler.pt"
        if self.accelerator.scaler is not None:
            if scaler.is_file():
                self.accelerator.scaler.load_state_dict(torch.load(scaler, weights_only=True))
            else:
                logger.warning("%s has no scaler.pt: the fp16 loss scale starts again from its initial value",
                               checkpoint)
        saved = TrainerState.load(state_path)
        if saved.global_step > self.total_steps:
            raise ValueError(f"{checkpoint} is at step {saved.global_step}, past this run's {self.total_steps} steps "
                             "(--max_steps): it belongs to a longer run. Raise --max_steps to train on from it, or "
                             "start a new run in another --output_dir")
        if saved.run_id is None:  # a checkpoint written before runs had an id: from here on, this run's
            saved.run_id = self.state.run_id
        was = self.scheduler.get_last_lr()[0]
        now = self._apply_schedule()  # the saved optimizer's learning rate is the saved run's schedule's
        if saved.max_steps != self.total_steps:
            logger.warning("%s was saved by a run of %d steps; this run has %d: the learning rate follows the "
                           "schedule of a %d-step run from here (at step %d: %.3g, was %.3g)", checkpoint,
                           saved.max_steps, self.total_steps, self.total_steps, saved.global_step, now, was)
        saved.max_steps = self.total_steps
        self._bring_best(checkpoint, saved)
        best_state = self.run_dir / "checkpoint-best" / STATE_FILE
        if best_state.is_file():  # the best checkpoint may be newer than the resumed step
            best = TrainerState.load(best_state)
            if best.run_id not in (None, saved.run_id):  # another run in this folder wrote it last
                if saved.best_metric is not None:
                    logger.warning("%s was written by another run in %s: the best %s %.4f this run recorded (step "
                                   "%s) is not in it; checkpoint-best will be this run's next best evaluation",
                                   best_state.parent, self.run_dir, saved.metric, saved.best_metric, saved.best_step)
                saved.best_metric, saved.best_step = None, None
            elif best.best_metric is not None and (saved.best_metric is None
                                                   or best.best_metric < saved.best_metric):
                saved.best_metric, saved.best_step = best.best_metric, best.best_step
        self._forget_best_of_other_eval(saved, checkpoint)
        self._carry_position(saved, checkpoint)
        saved.data = self.data_layout
        self.state = saved
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, saved.global_step, saved.epoch,
                    saved.batch_in_epoch)

    def _apply_hyperparameters(self, checkpoint: Path) -> None:
        """This run's peak learning rate and weight decay, over the ones the restored optimizer and scheduler state
        hold (the saved run's: a resumed run kept training at its old --learning_rate, and said nothing)."""
        sched, lr, decay = self.scheduler, self.options.learning_rate, self.options.weight_decay
        groups = sched.optimizer.param_groups
        was_lr, was_decay = sched.base_lrs[0], groups[0].get("weight_decay")
        if (was_lr, was_decay) != (lr, decay):
            logger.warning("%s was trained at --learning_rate=%g --weight_decay=%g; this run goes on at %g and %g",
                           checkpoint, was_lr, was_decay, lr, decay)
        sched.base_lrs = [lr] * len(groups)
        for group in groups:
            group["initial_lr"], group["weight_decay"] = lr, decay

    def _apply_schedule(self) -> float:
        """Set the optimizer's learning rate to this run's schedule at the restored scheduler position (the saved
        optimizer state holds the saved run's value, which the next step would use: a run extended from its
        last step trained one step at its final rate, 0). Returns the first group's rate."""
        sched = self.scheduler
        rates = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for group, rate in zip(sched.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        sched._last_lr = rates  # what get_last_lr() (the logged rate) reports
        return rates[0]

    def _forget_best_of_other_eval(self, saved: TrainerState, checkpoint: Path) -> None:
        """A run resumed with another eval set (``--test_data``, ``--max_eval_samples``) or ``--metric``: the
        recorded best was measured on that one, and a score of this one could not replace a lower one of it (a best
        CER of 0.0917 kept over 0.1 of the new set); forgotten, with a warning: the next evaluation is the best."""
        now = self.eval_set.fingerprint()
        if saved.eval_data in (None, now) and saved.metric == self.options.metric:
            saved.eval_data = now
            return
        if saved.best_metric is not None:
            logger.warning("%s: the best %s %.4f (step %s) was measured on another eval set or metric; "
                           "checkpoint-best will be the best evaluation of this run on %s", checkpoint, saved.metric,
                           saved.best_metric, saved.best_step, self.options.metric)
        saved.best_metric, saved.best_step = None, None
        saved.eval_data, saved.metric = now, self.options.metric

    def _bring_best(self, checkpoint: Path, saved: TrainerState) -> None:
        """A run resumed into another folder: copy the resumed run's ``checkpoint-best`` there, or, where it has
        none, forget the recorded best (the next evaluation writes ``checkpoint-best``), so the best step the run
        reports is always a folder of the run."""
        target = self.run_dir / "checkpoint-best"
        if saved.best_metric is None:
            return
        there = (target / STATE_FILE).is_file()
        # every rank has looked before the main one copies: a rank that looked after it would skip the barrier
        # below and train on while the main one waits there (torchrun, 2 of 3 resumes into another folder hung)
        self.accelerator.wait_for_everyone()
        if there:
            return
        source = checkpoint.parent / "checkpoint-best"
        if (source / STATE_FILE).is_file():
            if self.accelerator.is_main_process:
                tmp = self.run_dir / ".tmp-checkpoint-best"
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    shutil.copytree(source, tmp)
                    publish_dir(tmp, target, overwrite=True)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            self.accelerator.wait_for_everyone()
            logger.info("copied %s (the resumed run's best) to %s", source, target)
            return
        logger.warning("%s: the resumed run's best checkpoint (step %s, %s %.4f) is not beside it; checkpoint-best "
                       "in %s will be the best evaluation of this run", checkpoint, saved.best_step, saved.metric,
                       saved.best_metric, self.run_dir)
        saved.best_metric, saved.best_step = None, None

    def _data_layout(self) -> dict[str, Any]:
        """How this run cuts its training set into batches, as a checkpoint records it (``batches_per_epoch`` is None
        for a stream: its one "epoch" is the whole run)."""
        from utils.train_data import data_layout

        fingerprint, described = data_layout(self.train_dataset)
        return {"fingerprint": fingerprint, "description": described, "seed": self.options.seed,
                "per_batch": self.per_batch, "world_size": self.world_size,
                "batches_per_epoch": None if self.streaming else self.batches_per_epoch}

    def _carry_position(self, saved: TrainerState, checkpoint: Path) -> None:
        """Move the saved position in the epoch (``batch_in_epoch``) onto this run's batches when the checkpoint's
        run cut its data differently. Same items and seed, another batch size or number of processes: the same items
        in the same order, so the position moves exactly (to the batch holding the first unseen item; a stream: the
        same number of processes only). Other items (another packing, data or seed): the epoch's order differs, so the
        position keeps its share of the epoch and some of the epoch's clips are seen twice or not at all; said in a
        warning. Between a stream and a dataset read whole the positions have no common measure: the epoch starts from
        its beginning, with a warning."""
        old, new = saved.data, self.data_layout
        if old is None:
            logger.info("%s records no data layout (written by an earlier version): resuming at batch %d of epoch "
                        "%d as saved, which is right only if the batch size, packing and data are unchanged",
                        checkpoint, saved.batch_in_epoch, saved.epoch)
            return
        legacy = getattr(self.train_dataset, "legacy_fingerprint", None)
        if legacy is not None and old.get("fingerprint") == legacy():  # a stream's checkpoint of the version before
            old = {**old, "fingerprint": new["fingerprint"], "description": new["description"]}
        if old == new or saved.batch_in_epoch == 0:
            if old != new:
                logger.info("the checkpoint's run cut the data into %s; this run: %s (the checkpoint is at the "
                            "start of epoch %d, so nothing is lost)", old["description"], new["description"],
                            saved.epoch)
            return
        if (old.get("batches_per_epoch") is None) != (new["batches_per_epoch"] is None):
            # a stream's position counts batches over the whole run, an epoch's within the epoch: no common measure
            if new["batches_per_epoch"] is None:
                was, starts = f"batches of epoch {saved.epoch} of {old['description']}", "from its first item"
                saved.epoch = 0  # a stream's one "epoch" is the whole run
            else:
                was, starts = f"batches of {old['description']}", f"at the beginning of epoch {saved.epoch}"
            logger.warning("the checkpoint's run had trained %d %s on each process; this run reads %s: a stream's "
                           "position and an epoch's do not correspond, so this run's data starts %s (items seen "
                           "before are trained on again; the weights, optimizer and step go on)",
                           saved.batch_in_epoch, was, new["description"], starts)
            saved.batch_in_epoch = 0
            return
        position = saved.batch_in_epoch
        # the epoch's order depends on the items and the seed; EpochSampler deals it out to the processes in turn,
        # so the items all processes had trained on are the order's first ones, whatever their number (a stream
        # shards its items its own way: only the same number of processes goes on exactly there)
        same = ("fingerprint", "seed") + (("world_size",) if new["batches_per_epoch"] is None else ())
        if all(old.get(k) == new[k] for k in same):
            seen = position * old["per_batch"] * old["world_size"]  # the epoch's items trained on, all processes
            saved.batch_in_epoch = seen // new["world_size"] // new["per_batch"]
            repeated = seen - saved.batch_in_epoch * new["per_batch"] * new["world_size"]
            logger.info("the checkpoint's run took %d item(s) a batch on %d process(es), this run %d on %d: epoch %d "
                        "goes on after its first %d item(s) (batch %d)%s", old["per_batch"], old["world_size"],
                        new["per_batch"], new["world_size"], saved.epoch, seen, saved.batch_in_epoch,
                        f"; {repeated} item(s) are trained on again" if repeated else "")
            return
        old_total, new_total = old["batches_per_epoch"], new["batches_per_epoch"]
        if old_total and new_total:
            saved.batch_in_epoch = position * new_total // old_total
            where = (f"at batch {saved.batch_in_epoch} of {new_total}, the same share of the epoch "
                     f"({position}/{old_total} before)")
        else:  # streams on both sides (another source, split, bounds or buffer): count this rank's items
            seen = position * old["per_batch"] * old["world_size"] // new["world_size"]
            saved.batch_in_epoch = seen // new["per_batch"]
            where = f"after about {seen} item(s) on this rank"
        logger.warning("the checkpoint's run cut the training data into %s on %d process(es); this run cuts it into "
                       "%s on %d (another batch size, --pack_audio, data, seed or process count): the order of epoch "
                       "%d differs, so it goes on %s, and some of its clips are trained on twice or not at all. "
                       "Resume with the checkpoint's settings to continue exactly", old["description"],
                       old["world_size"], new["description"], new["world_size"], saved.epoch, where)

    def _restore_rng(self, path: Path) -> None:
        if not path.is_file():
            return
        saved = torch.load(path, weights_only=True)
        if isinstance(saved, torch.Tensor):  # checkpoints before per-rank states: one CPU state for all ranks
            torch.set_rng_state(saved)
            return
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if len(saved) != world:
            logger.warning("%s holds the RNG states of %d process(es), this run has %d: rank %d takes state %d",
                           path, len(saved), world, rank, rank % len(saved))
        state = saved[rank % len(saved)]
        torch.set_rng_state(state["cpu"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        if (numpy := state.get("numpy")) is not None:  # checkpoints before it: SpecAugment's masks start again
            np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                                 numpy["has_gauss"], numpy["gauss"]))

    # -- logging

    def _log(self, entry: dict[str, Any]) -> None:
        self.state.log_history.append(entry)
        if self.writer is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, entry["step"])
        logger.info("step %d: %s", entry["step"],
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()
                              if k != "step"))

    def _evaluate_and_keep_best(self) -> float:
        o = self.options
        value, _ = evaluate(self.model, self.eval_set, self.collator, self.processor.tokenizer,
                            accelerator=self.accelerator, language=o.language, task=o.task, metric=o.metric,
                            batch_size=o.per_device_eval_batch_size, max_new_tokens=o.generation_max_length,
                            encoder_states=self.eval_encoder, generation_config=self.generation_config)
        self._log({"step": self.state.global_step, f"eval_{o.metric}": value})
        if self.state.best_metric is None or value < self.state.best_metric:
            self.state.best_metric, self.state.best_step = value, self.state.global_step
            self._save("checkpoint-best", full=False)
            if self.accelerator.is_main_process:
                logger.info("new best %s %.4f at step %d", o.metric, value, self.state.global_step)
        return value

    # -- the loop

    def train(self) -> TrainResult:
        acc, o, state = self.accelerator, self.options, self.state
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "runs"))
        unwrapped = acc.unwrap_model(self.model)
        self.model.train()
        samples, first_step = 0, state.global_step
        # since the last log: summed token losses and label tokens (this rank), AdaLoRA penalty and steps
        running_loss, running_tokens, running_penalty, running_steps = 0.0, 0, 0.0, 0
        t0 = time.perf_counter()
        earlier = list_checkpoints(self.run_dir) if state.global_step == 0 and acc.is_main_process else []
        if earlier:
            logger.warning("%s holds checkpoints of an earlier run (up to checkpoint-%d); this run starts afresh and "
                           "overwrites those with its step numbers, keeps the others (--resume_from_checkpoint=auto "
                           "would take the highest step): use another --output_dir to keep runs apart",
                           self.run_dir, earlier[-1][0])
        if o.eval_at_start and state.global_step == 0:
            self._evaluate_and_keep_best()
        bar = tqdm(total=self.total_steps, initial=state.global_step, desc="train",
                   disable=not acc.is_local_main_process)
        while state.global_step < self.total_steps:
            if state.batch_in_epoch >= self.batches_per_epoch:  # resumed with fewer batches an epoch than saved
                logger.warning("the checkpoint had trained %d batches of epoch %d, more than this run's %d an epoch "
                               "(a larger batch, more processes or less data): epoch %d starts", state.batch_in_epoch,
                               state.epoch, self.batches_per_epoch, state.epoch + 1)
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            skip = state.batch_in_epoch * self.per_batch
            self.train_dataset.set_epoch(state.epoch)
            if self.streaming:
                sampler = None
                self.train_dataset.set_skip(skip, batch_size=self.per_batch)
            else:
                sampler = EpochSampler(len(self.train_dataset), seed=o.seed, epoch=state.epoch,
                                       rank=acc.process_index, world_size=self.world_size, skip=skip)
            # its own generator: creating the iterator draws a seed, which must not shift the global RNG that
            # LoRA dropout uses (a resumed run then repeats the interrupted one exactly)
            loader = DataLoader(self.train_dataset, batch_size=self.per_batch, sampler=sampler,
                                collate_fn=self.collator, num_workers=o.num_workers,
                                pin_memory=acc.device.type == "cuda",
                                generator=torch.Generator().manual_seed(o.seed))
            batches = iter(loader)
            while state.global_step < self.total_steps:
                # an epoch's last group may be short; the whole group is loaded first, as its loss is one mean
                # over all its label tokens (on every process), whatever batch they came in
                size = min(o.gradient_accumulation_steps, self.batches_per_epoch - state.batch_in_epoch)
                group = list(itertools.islice(batches, size))
                if not group:  # the loader ran out (an epoch ended without a pending step)
                    if sampler is None:
                        raise RuntimeError("the training stream ended")  # StreamingSpeechDataset never does
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    break
                loss_sum, tokens, penalty = self._accumulate(group, unwrapped)
                running_loss += loss_sum
                running_tokens += tokens
                running_penalty += penalty
                running_steps += 1
                samples += sum(int(batch["clips"]) for batch in group) * self.world_size
                state.batch_in_epoch += len(group)
                if o.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), o.max_grad_norm)
                learning_rate = self.scheduler.get_last_lr()[0]  # what this step uses (logged with it)
                self.optimizer.step()
                if not self.optimizer.step_was_skipped:  # fp16: a step skipped for inf/nan gradients changes nothing
                    if o.use_adalora:  # rank budgeting needs this step's gradients: before zero_grad
                        self._allocate_ranks(unwrapped)
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                bar.update(1)
                epoch_ended = state.batch_in_epoch >= self.batches_per_epoch or len(group) < size
                if epoch_ended:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                self._after_step(running_loss, running_tokens, running_penalty / running_steps, learning_rate)
                if state.global_step % o.logging_steps == 0:
                    running_loss, running_tokens, running_penalty, running_steps = 0.0, 0, 0.0, 0
                if epoch_ended:
                    break
        bar.close()
        seconds = time.perf_counter() - t0
        if not any(e.get("step") == state.global_step and f"eval_{o.metric}" in e for e in state.log_history):
            self._evaluate_and_keep_best()
        self._save("checkpoint-final", full=False)
        if acc.is_main_process:
            if self.writer is not None:
                self.writer.close()
            plot_training_curves(state.log_history, self.run_dir / "training_curves.png", o.metric)
        return TrainResult(state, self.run_dir, seconds, samples, state.global_step - first_step)

    def _accumulate(self, group: list[dict[str, Any]], unwrapped) -> tuple[float, int, float]:
        """Forward and backward every batch of one accumulation group.

        The gradient is that of one mean over the label tokens of the whole group on all processes, as if it were
        one big batch: a short (no-speech) clip weighs by its few tokens, not like a whole batch. Returns this
        process's summed token loss, its number of label tokens and the AdaLoRA regulariser added (else 0)."""
        acc, o = self.accelerator, self.options
        counts = [int((batch["labels"] != -100).sum()) for batch in group]
        total = acc.reduce(torch.tensor(sum(counts), device=acc.device), reduction="sum")
        total = max(int(total), 1)
        loss_sum = penalty = 0.0
        for i, batch in enumerate(group):
            last = i == len(group) - 1
            # accelerate (DeepSpeed's engine.step, AcceleratedOptimizer) reads this flag to know whether the
            # micro-batch ends an accumulation group; nothing else sets it, as our loader is not prepared
            acc.gradient_state._set_sync_gradients(last)
            sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
            if self.train_encoder is not None:
                encoder_inputs = {"encoder_outputs": (self.train_encoder(batch["index"].tolist(),
                                                                         batch["input_features"]),)}
            else:
                encoder_inputs = {"input_features": batch["input_features"].to(acc.device, feature_dtype(unwrapped))}
            with sync, acc.autocast():
                out = self.model(**encoder_inputs, decoder_input_ids=batch["decoder_input_ids"].to(acc.device),
                                 use_cache=False)
                # in fp32 whatever the weights' dtype; labels are aligned with decoder_input_ids
                token_loss = F.cross_entropy(out.logits.float().flatten(0, 1),
                                             batch["labels"].to(acc.device).flatten(), ignore_index=-100,
                                             reduction="sum")
                # DDP averages the processes' gradients: x world size makes that the mean over all their tokens
                loss = token_loss * (self.world_size / total)
                if o.use_adalora:  # peft adds this only to a loss the model computes itself; once per step
                    reg = adalora_orth_regularization(unwrapped) / len(group)
                    loss = loss + reg
                    penalty += float(reg.detach())
            acc.backward(loss)
            loss_sum += float(token_loss.detach())
        return loss_sum, sum(counts), penalty

    def _after_step(self, running_loss: float, running_tokens: int, penalty: float = 0.0,
                    learning_rate: float = 0.0) -> None:
        """Log (the mean token loss since the last log, over all processes, plus the AdaLoRA ``penalty`` of a
        step, and the ``learning_rate`` the step used), evaluate and save as scheduled."""
        o, state = self.options, self.state
        if state.global_step % o.logging_steps == 0:
            acc = self.accelerator
            sums = acc.reduce(torch.tensor([running_loss, float(running_tokens)], dtype=torch.float32,
                                           device=acc.device), reduction="sum")
            if float(sums[1]) > 0:
                entry = {"step": state.global_step, "loss": float(sums[0] / sums[1]) + penalty,
                         "learning_rate": learning_rate}
                if not self.streaming:  # a stream has no epochs (it logged epoch=1.08e-19)
                    entry["epoch"] = state.epoch + state.batch_in_epoch / self.batches_per_epoch
                self._log(entry)
        if o.eval_steps > 0 and state.global_step % o.eval_steps == 0:
            self._evaluate_and_keep_best()
        if o.save_steps > 0 and state.global_step % o.save_steps == 0:
            self._save(f"checkpoint-{state.global_step}", full=True)


def warmup_then_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at each optimizer step (0-based, as ``LambdaLR`` counts): a linear rise over the
    first ``warmup_steps`` steps, (k + 1) / (warmup_steps + 1), the full rate at the step after them, then a linear
    fall to the last step, (total - k) / (total - warmup_steps). transformers' schedule gives the first step a rate of
    0 (with --warmup_steps=1 the first step trained nothing)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def plot_training_curves(log_history: list[dict[str, Any]], path: str | os.PathLike, metric: str = "cer") -> None:
    """Save a PNG with training loss (left axis) and eval CER/WER (right axis) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e[f"eval_{metric}"]) for e in log_history if f"eval_{metric}" in e]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), color="tab:red", marker="o", label=f"eval {metric}")
        ax2.set_ylabel(f"eval {metric.upper()}", color="tab:red")
    ax.set_title("Whisper fine-tuning")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
