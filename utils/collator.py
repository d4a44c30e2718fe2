"""Batching for Whisper training: stack features, pad labels with -100, build decoder inputs.

Whisper's decoder must see ``<|startoftranscript|>`` exactly once, first. Its id is the model's
``decoder_start_token_id``, not ``bos_token_id`` (which for Whisper is ``<|endoftext|>``): checking
the latter is the classic bug that leaves a doubled start token in every training example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # label value the cross-entropy loss skips


@dataclass(frozen=True)
class WhisperCollator:
    """Collate ``{"input_features", "labels"[, "index"]}`` items into a training batch.

    Returns:
        input_features: float32 (batch, n_mels, frames).
        labels: int64 (batch, max_len), padded with -100: the item's ``"targets"`` where it has them (a no-speech
            clip's, ``utils.train_data.nospeech_targets``; same length as its labels), else its labels.
        decoder_input_ids: int64 (batch, max_len) = ``<|startoftranscript|>`` + labels shifted right,
            padded with ``pad_token_id`` (those positions are masked out of the loss). An item with a
            ``"prompt"`` (previous-text ids) starts with ``<|startofprev|>`` + prompt, whose labels are -100.
        index: int64 (batch,) dataset indices, when the items carry them.
        clips: int64 () clips in the batch (a packed window holds several).

    A list of items in place of an item (``utils.train_data.ClipBatches``: a whole batch) is flattened.
    """

    decoder_start_token_id: int
    pad_token_id: int
    prompt_start_token_id: int | None = None  # <|startofprev|>, for items that carry a "prompt"

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        items = [x for item in items for x in (item if isinstance(item, list) else [item])]
        if not items:
            raise ValueError("cannot collate an empty batch")
        labels_list = [self.strip_start(item["labels"]) for item in items]
        prefixes = [self.prompt_prefix(item.get("prompt")) for item in items]
        max_len = max(len(p) + len(ids) for p, ids in zip(prefixes, labels_list))
        labels = torch.full((len(items), max_len), IGNORE_INDEX, dtype=torch.long)
        decoder_input_ids = torch.full((len(items), max_len), self.pad_token_id, dtype=torch.long)
        for i, (item, prefix, ids) in enumerate(zip(items, prefixes, labels_list)):
            row = torch.as_tensor(ids, dtype=torch.long)
            p = len(prefix)  # the prompt is decoder input only: its positions get no loss
            decoder_input_ids[i, :p] = torch.as_tensor(prefix, dtype=torch.long)
            targets = item.get("targets")
            if targets is not None and len(targets) != len(ids):
                raise ValueError(f"an item's targets ({len(targets)}) and labels ({len(ids)}) differ in length")
            labels[i, p: p + len(ids)] = row if targets is None else torch.as_tensor(targets, dtype=torch.long)
            decoder_input_ids[i, p] = self.decoder_start_token_id
            decoder_input_ids[i, p + 1: p + len(ids)] = row[:-1]
        features = torch.from_numpy(np.stack([np.asarray(item["input_features"], dtype=np.float32) for item in items]))
        batch = {"input_features": features, "labels": labels, "decoder_input_ids": decoder_input_ids}
        if "index" in items[0]:
            batch["index"] = torch.as_tensor([item["index"] for item in items], dtype=torch.long)
        batch["clips"] = torch.as_tensor(sum(int(item.get("clips", 1)) for item in items))
        return batch

    def prompt_prefix(self, prompt: Sequence[int] | None) -> list[int]:
        """``<|startofprev|>`` + prompt ids, the decoder input before ``<|startoftranscript|>`` ([] for none)."""
        if not prompt:
            return []
        if self.prompt_start_token_id is None:
            raise ValueError("an item carries a prompt but the collator has no prompt_start_token_id")
        return [self.prompt_start_token_id, *prompt]

    def strip_start(self, ids: Sequence[int]) -> list[int]:
        """Drop a leading ``<|startoftranscript|>`` (tokenizer output has one) so it is added only once."""
        ids = list(ids)
        if ids and ids[0] == self.decoder_start_token_id:
            ids = ids[1:]
        if not ids:
            raise ValueError("a label sequence is empty; it needs at least <|endoftext|>")
        return ids
