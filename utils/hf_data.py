"""Hugging Face ``datasets`` as training and evaluation data, read our way.

Wherever a script takes a jsonlines manifest (``--train_data``, ``--test_data``, ``--replay_data``) it also takes:

- a folder written by ``save_to_disk``: a ``DatasetDict`` (the split is picked with ``--train_split`` /
  ``--test_split``) or a single ``Dataset``;
- an audiofolder: audio files plus ``metadata.csv`` or ``metadata.jsonl`` (``file_name`` and a text column),
  either one per split subfolder (``train/``, ``test/``) or one for the whole folder;
- parquet files: one file, a glob, or a folder of them (a hub dataset's files, ``train-*.parquet`` …);
- a hub dataset name with ``--dataset_config`` (``mozilla-foundation/common_voice_17_0 --dataset_config=zh-CN``),
  downloaded and cached by ``datasets``; evaluation.py can stream it instead (``--streaming=True``).

Audio is never decoded by ``datasets`` (its decoder needs torchcodec): the audio column is read as the file's
bytes or path and decoded by utils.audio (libsndfile/ffmpeg, soxr to 16 kHz), exactly like a manifest's files.
As with a manifest, a dataset is checked whole when it is opened (columns, text, label length, clip duration),
kept as numpy columns (row number, duration), and its items become ``Record``s on demand. A source with a single
split is used whatever the split flag says.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.audio import AudioLoadError, audio_bytes_duration, audio_duration
from utils.data import (LABEL_SPECIAL_TOKENS, MAX_INVALID_LISTED, MAX_LABEL_TOKENS, Manifest, ManifestError, Record,
                        RecordSource, load_manifest, log_left_out, raise_invalid)
from utils.text import clean_text

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".json", ".jsonl", ".jsonlines")
TEXT_COLUMNS = ("sentence", "text", "transcription", "transcript", "normalized_text", "raw_text")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


_ROW = "__row__"  # the column a shuffled local dataset gets: each item's row, for messages


class DatasetError(ManifestError):
    """A dataset cannot be opened or an item is invalid; the message names the dataset, split, row and fix."""


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a Hugging Face dataset: hub config, column names (None = found by name), streaming, whether the
    hub may be asked (``local_files_only``: no, as for the model)."""

    config: str | None = None
    audio_column: str | None = None
    text_column: str | None = None
    streaming: bool = False
    local_files_only: bool = False


def is_manifest(spec: str) -> bool:
    """True when ``spec`` names a jsonlines manifest: a ``.json``/``.jsonl`` path (existing or not), or an
    existing file that is not parquet."""
    low = spec.lower()
    return low.endswith(MANIFEST_SUFFIXES) or (os.path.isfile(spec) and not low.endswith(".parquet"))


def load_data(spec: str, *, split: str, split_flag: str, dataset: DatasetOptions = DatasetOptions(),
              min_duration: float = 0.0, max_duration: float = 30.0,
              encode: Callable[[str], Sequence[int]] | None = None, timestamps: bool = False,
              skip_invalid: bool = False, languages: Collection[str] | None = None) -> Manifest | DatasetSource:
    """A manifest (utils.data.load_manifest) or a dataset (``load_dataset_source``), validated whole.

    Args:
        spec: manifest path, dataset folder, parquet file/glob or hub name.
        split, split_flag: the split to use and the flag that sets it (named in messages).
        dataset: columns and hub config of a dataset (ignored for a manifest).
        min_duration, max_duration: clips outside [min, max] seconds are left out; max <= 0: no upper bound.
        encode: text → token ids; when given, items whose label is longer than Whisper's limit are invalid.
        timestamps: count manifest labels as timestamp labels (datasets carry no segment times).
        skip_invalid: leave out invalid items (logged and counted) instead of failing on the first.
        languages: the language codes the model has a token for (a manifest line in another one is invalid).

    Raises:
        ManifestError (DatasetError for a dataset): unreadable source or invalid item.
    """
    if spec.lower().endswith((".csv", ".tsv")) and os.path.isfile(spec):
        kind = "a TSV" if spec.lower().endswith(".tsv") else "a CSV"
        raise DatasetError(f"{spec}: {kind} file is not read as data; use a jsonlines manifest (.json/.jsonl: one JSON "
                           "object per line), or an audiofolder: the folder holding metadata.csv (file_name and "
                           "sentence columns) and the audio")
    if is_manifest(spec):
        return load_manifest(spec, min_duration=min_duration, max_duration=max_duration, encode=encode,
                             timestamps=timestamps, skip_invalid=skip_invalid, languages=languages)
    return load_dataset_source(spec, split=split, split_flag=split_flag, options=dataset,
                               min_duration=min_duration, max_duration=max_duration, encode=encode,
                               skip_invalid=skip_invalid)


class DatasetSource(RecordSource):
    """The kept rows of one split of a Hugging Face dataset; ``source[i]`` builds the ``Record`` of row ``rows[i]``.

    Memory is 12 bytes per kept row (row number, duration) on top of the memory-mapped Arrow table.
    """

    def __init__(self, dataset: Any, *, name: str, split: str | None, audio_column: str, text_column: str,
                 rows: np.ndarray, durations: np.ndarray, base_dir: str | None = None) -> None:
        self.dataset = dataset
        self.name = name
        self.split = split
        self.audio_column = audio_column
        self.text_column = text_column
        self.rows = rows
        self.durations = durations
        self.base_dir = base_dir  # relative audio paths are resolved against it

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> Record:
        row = int(self.rows[index])
        item = self.dataset[row]
        return _record(item[self.audio_column], item[self.text_column], float(self.durations[index]),
                       _row_label(self.name, self.split, row), self.base_dir)

    def location(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages: dataset, split and row."""
        return _row_label(self.name, self.split, int(self.rows[index]))

    def sentences(self) -> list[str]:
        """Every kept row's text, in order, read from the text column alone (no audio)."""
        texts = self.dataset.select_columns([self.text_column])[:][self.text_column]
        return [t if isinstance(t, str) else "" for t in (texts[int(row)] for row in self.rows)]



def source_folder(spec: str) -> str | None:
    """The folder a local dataset's relative audio paths are read against first: the folder itself, or the folder
    of a parquet file or of a glob's files (it was the working directory for those: a parquet file's
    "wav/a.flac" next to it was not found from another directory); None for a hub name."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    if spec.lower().endswith(".parquet"):
        head = spec
        while glob.has_magic(head):
            head = os.path.dirname(head)
        return os.path.abspath(head if os.path.isdir(head) else os.path.dirname(head) or ".")
    return None


def _audio_parts(value: Any, base_dir: str | None) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an audio cell: an undecoded Audio struct ``{"bytes", "path"}`` or a path string."""
    if isinstance(value, str):
        data, path = None, value
    elif isinstance(value, dict) and ("bytes" in value or "path" in value):
        data, path = value.get("bytes"), value.get("path")
    else:
        raise DatasetError(f"holds {type(value).__name__}, not an audio file (an Audio feature or a file path)")
    if data is None and path and base_dir and not os.path.isabs(path):
        # against the dataset's folder, else the working directory (as manifests are read): a dataset saved with
        # to_parquet() keeps the paths as they were given, relative to the directory it was made in
        inside = os.path.join(base_dir, path)
        path = inside if os.path.exists(inside) or not os.path.exists(path) else os.path.abspath(path)
    if data is None and not path:
        raise DatasetError("has neither audio bytes nor a path")
    return data, path


def _record(audio: Any, text: Any, duration: float, label: str, base_dir: str | None) -> Record:
    data, path = _audio_parts(audio, base_dir)
    text = clean_text(text)
    if data is not None:  # the label names the item; the file name's suffix tells ffmpeg the format
        name = label + (f"/{os.path.basename(path)}" if path else "")
        return Record(audio_path=name, sentence=text, duration=duration, audio_bytes=data)
    return Record(audio_path=path, sentence=text, duration=duration)


# -- opening a source


def _pick_split(splits: Any, split: str, split_flag: str, spec: str) -> tuple[Any, str]:
    names = list(splits.keys())
    if split in names:
        return splits[split], split
    if len(names) == 1:
        logger.info("%s has one split, '%s': using it (%s=%s does not apply)", spec, names[0], split_flag, split)
        return splits[names[0]], names[0]
    raise DatasetError(f"{spec}: no split '{split}' (it has: {', '.join(names)}); choose one with {split_flag}")


def _audiofolder_splits(folder: str) -> dict[str, str]:
    """{split: metadata file} of an audiofolder: one per subfolder that has one, else the folder's own."""
    splits = {}
    for entry in sorted(os.listdir(folder)):
        for meta in METADATA_FILES:
            if os.path.isfile(os.path.join(folder, entry, meta)):
                splits[entry] = os.path.join(folder, entry, meta)
                break
    if not splits:
        for meta in METADATA_FILES:
            if os.path.isfile(os.path.join(folder, meta)):
                splits["train"] = os.path.join(folder, meta)
                break
    return splits


def _read_audiofolder(meta_path: str) -> Any:
    """An audiofolder's metadata file → ``datasets.Dataset`` with the audio column as absolute file paths."""
    import datasets

    base = os.path.dirname(os.path.abspath(meta_path))
    with open(meta_path, encoding="utf-8-sig", newline="") as f:  # Excel's "CSV UTF-8" starts with a BOM
        if meta_path.endswith(".csv"):
            rows = list(csv.DictReader(f))
            lines = range(2, len(rows) + 2)
        else:
            rows, lines = [], []
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{meta_path}:{lineno}: not valid JSON ({e})") from e
                lines.append(lineno)
    if not rows:
        raise DatasetError(f"{meta_path}: no rows; expected a file_name column and a text column")
    columns: dict[str, list] = {}
    for lineno, row in zip(lines, rows):
        if not isinstance(row, dict) or not row.get("file_name"):
            raise DatasetError(f"{meta_path}:{lineno}: 'file_name' missing; each row names its audio file, "
                               "relative to the metadata file")
        path = os.path.join(base, row["file_name"])
        if not os.path.isfile(path):
            raise DatasetError(f"{meta_path}:{lineno}: audio file {row['file_name']} not found in {base}")
        if set(row) != set(rows[0]):
            raise DatasetError(f"{meta_path}:{lineno}: columns {sorted(row)} differ from the first row's "
                               f"{sorted(rows[0])}")
        for key, value in row.items():
            columns.setdefault("audio" if key == "file_name" else key, []).append(path if key == "file_name" else value)
    if "duration" in columns:
        try:
            columns["duration"] = [float(v) for v in columns["duration"]]
        except (TypeError, ValueError):
            del columns["duration"]  # computed from the files instead
    return datasets.Dataset.from_dict(columns)


def _parquet_splits(folder: str) -> dict[str, list[str]]:
    """The .parquet files of a folder by split, by the words ``datasets`` names splits with in their paths
    (``train-0000.parquet``, ``test/…``, ``dev.parquet``; "train" for a file without one). Only .parquet files:
    audio kept next to them (``wav/…``) was read as parquet ("Parquet magic bytes not found in footer")."""
    from datasets.data_files import SPLIT_KEYWORDS

    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True) if os.path.isfile(f))
    splits: dict[str, list[str]] = {}
    for f in files:  # a split keyword as a word of the file's path inside the folder (audio beside them may be
        words = re.split(r"[^a-z]+", os.path.relpath(f, folder).lower())  # named test_0001.flac: not looked at)
        name = next((str(split) for split, keys in SPLIT_KEYWORDS.items() if any(k in words for k in keys)), None)
        splits.setdefault(name or "", []).append(f)
    if "" in splits:  # files without a split's name are "train"
        splits.setdefault("train", []).extend(splits.pop(""))
    return splits


def _load_parquet(files: dict[str, list[str]], streaming: bool, spec: str) -> Any:
    """``datasets.load_dataset("parquet")`` of ``files`` (split → paths); a file that is not parquet is one
    DatasetError naming the source."""
    import datasets

    try:
        return datasets.load_dataset("parquet", data_files=files, streaming=streaming)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{spec}: cannot read it as parquet ({str(e).splitlines()[0]})") from e


def _open_split(spec: str, split: str, split_flag: str, options: DatasetOptions, streaming: bool
                ) -> tuple[Any, str | None]:
    """The split of ``spec`` as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming a hub/parquet
    source) and the split's name (None for a source without splits)."""
    import datasets

    config = options.config

    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "dataset_dict.json")):
            return _pick_split(datasets.load_from_disk(spec), split, split_flag, spec)
        if os.path.isfile(os.path.join(spec, "state.json")):
            return datasets.load_from_disk(spec), None
        folder_splits = _audiofolder_splits(spec)
        if folder_splits:
            meta, name = _pick_split(folder_splits, split, split_flag, spec)
            return _read_audiofolder(meta), name
        if glob.glob(os.path.join(spec, "**", "*.parquet"), recursive=True):
            return _pick_split(_load_parquet(_parquet_splits(spec), streaming, spec), split, split_flag, spec)
        raise DatasetError(f"{spec}: a folder but not a dataset: expected dataset_dict.json or state.json "
                           "(save_to_disk), metadata.csv/metadata.jsonl (audiofolder) or .parquet files")
    if spec.lower().endswith(".parquet"):
        files = sorted(glob.glob(spec))
        if not files:
            raise DatasetError(f"{spec}: no parquet file found")
        return _load_parquet({"train": files}, streaming, spec)["train"], None
    if os.path.exists(spec) or not _HUB_NAME.fullmatch(spec):
        raise DatasetError(f"{spec}: not a manifest (.json/.jsonl), a dataset folder, parquet files or a Hugging "
                           "Face hub dataset name")
    first = spec.split("/")[0]
    # data/my_dataset: maybe a local path mistyped (said if the hub has no such dataset)
    local = (f"; or a local path? {first}/ is a folder here, {spec} is not" if "/" in spec and os.path.isdir(first)
             else "")
    try:
        with _hub_offline(options.local_files_only):
            ds = datasets.load_dataset(spec, config, split=split, streaming=streaming)
    except ConnectionError as e:
        if options.local_files_only:
            raise DatasetError(f"{spec}: not a local file or folder, nor in the datasets cache, and "
                               "--local_files_only=True keeps the Hugging Face hub out; give a local dataset "
                               f"(save_to_disk folder, audiofolder, parquet, manifest){local}") from e
        raise DatasetError(f"{spec}: not a local file or folder, and the Hugging Face hub cannot be reached ({e}); "
                           f"download it where there is internet (save_to_disk) and pass the folder{local}") from e
    except (FileNotFoundError, ValueError) as e:  # unknown dataset, config or split
        raise DatasetError(f"{spec}: cannot load it from the Hugging Face hub ({e}); check the name, "
                           f"--dataset_config and {split_flag}{local}") from e
    return ds, split


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """While inside, with ``offline``: ``datasets`` reads its cache only, as HF_HUB_OFFLINE=1 makes it (a model's
    ``--local_files_only``: cache only; without it an unreachable hub cost ~25 s of retries)."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _columns(ds: Any, spec: str, options: DatasetOptions) -> tuple[str, str]:
    """(audio column, text column): the given names, else the Audio feature / first known text name. A name given
    that this source lacks (the flags name the train, test and replay data's columns alike) gives way, with a
    warning, to the column found by its kind."""
    from datasets import Audio

    names = list(ds.column_names or [])
    features = ds.features or {}
    have = ", ".join(names)
    found_audio = next((n for n in names if isinstance(features.get(n), Audio)), "audio" if "audio" in names else None)
    found_text = next((n for n in TEXT_COLUMNS if n in names), None)
    picked = []
    for kind, given, found, flag in (("audio", options.audio_column, found_audio, "--audio_column"),
                                     ("text", options.text_column, found_text, "--text_column")):
        if given and given not in names and found:
            logger.warning("%s: no column %s (%s); using its %s column %s", spec, given, flag, kind, found)
            given = None
        column = given or found
        if column is None or column not in names:
            raise DatasetError(f"{spec}: no {kind} column{f' {column}' if column else ''} (columns: {have}); name it "
                               f"with {flag}")
        picked.append(column)
    audio, text = picked
    if audio == text:
        raise DatasetError(f"{spec}: --audio_column and --text_column both name {audio!r} (columns: {have})")
    return audio, text


def _undecoded(ds: Any, audio_column: str) -> Any:
    """``ds`` with its Audio column read as ``{"bytes", "path"}`` (never decoded by ``datasets``)."""
    from datasets import Audio

    feature = (ds.features or {}).get(audio_column)
    if isinstance(feature, Audio) and feature.decode:
        return ds.cast_column(audio_column, Audio(decode=False))
    return ds


def _row_label(name: str, split: str | None, row: int | str) -> str:
    """How an item is named in messages and reports: ``name[split]#row``."""
    return f"{name}[{split}]#{row}" if split else f"{name}#{row}"


def _checked_text(text: Any, where: str, column: str) -> str:
    if not isinstance(text, str):
        raise DatasetError(f"{where}: '{column}' is {text!r}, not text; use \"\" for a no-speech clip (or name the "
                           "text column with --text_column)")
    return text


def _duration_of(audio: Any, base_dir: str | None, where: str, column: str) -> float:
    """Seconds of an audio cell, from its header (or by decoding); DatasetError naming ``where`` and ``column``."""
    try:
        data, path = _audio_parts(audio, base_dir)
        return audio_bytes_duration(data, name=path or where) if data is not None else audio_duration(path)
    except (DatasetError, AudioLoadError) as e:
        raise DatasetError(f"{where}: '{column}' {e}; fix or remove that row") from e


DURATION_SAMPLES = 8  # rows whose 'duration' column is compared with their audio when a dataset is opened


def _check_duration_column(ds: Any, sampled: Sequence[tuple[int, float]], audio_column: str, base_dir: str | None,
                           label: str, split_name: str | None) -> None:
    """Compare the ``duration`` column with the audio of the ``sampled`` (row, duration) pairs (the column is
    trusted for every row, so its headers need not be read): a column in milliseconds, or written before the audio
    was cut, was found only when training reached a clip, after the model had loaded. Whole seconds pass (1 s
    slack)."""
    for row, said in sampled:
        where = _row_label(label, split_name, row)
        actual = _duration_of(ds[row][audio_column], base_dir, where, audio_column)
        if abs(actual - said) > max(1.0, 0.1 * actual):
            units = " (milliseconds?)" if said > 100 * actual else ""
            raise DatasetError(f"{where}: the 'duration' column says {said:g} s{units}, its audio holds {actual:.2f} "
                               "s; correct the column (seconds) or remove it: without it each clip's length is read "
                               "from its audio")


def load_dataset_source(
    spec: str,
    *,
    split: str,
    split_flag: str,
    options: DatasetOptions = DatasetOptions(),
    min_duration: float = 0.0,
    max_duration: float = 30.0,
    encode: Callable[[str], Sequence[int]] | None = None,
    max_label_tokens: int = MAX_LABEL_TOKENS,
    skip_invalid: bool = False,
    show_progress: bool = True,
) -> DatasetSource:
    """Open one split of a dataset (see the module docstring) and check every row: audio readable (its duration
    from the header, or a numeric ``duration`` column), text a string ("" = no-speech clip), label within
    Whisper's limit, duration within bounds. Arguments as in ``load_data``.

    Raises:
        DatasetError: the source cannot be opened, a column is missing, or a row is invalid (unless skipped).
    """
    ds, split_name = _open_split(spec, split, split_flag, options, streaming=False)
    audio_column, text_column = _columns(ds, spec, options)
    numeric = {"float32", "float64", "int32", "int64"}
    duration_feature = (ds.features or {}).get("duration")
    has_duration = getattr(duration_feature, "dtype", None) in numeric and "duration" not in (audio_column, text_column)
    keep = [audio_column, text_column] + (["duration"] if has_duration else [])
    ds = _undecoded(ds.select_columns(keep), audio_column)
    base_dir = source_folder(spec)
    label = spec.rstrip("/")
    rows, durations = [], []
    sampled: list[tuple[int, float]] = []  # (row, its 'duration') of valid rows spread over the dataset
    every = max(1, len(ds) // DURATION_SAMPLES)
    invalid: list[DatasetError] = []  # the first MAX_INVALID_LISTED invalid rows
    skipped_invalid = skipped_short = skipped_long = 0
    # one pass over the needed columns, in Arrow batches (the audio only when its header gives the duration)
    reading = ds.select_columns([text_column, "duration"]) if has_duration else ds
    with tqdm(total=len(ds), desc=f"checking {os.path.basename(label)}", unit="item",
              disable=not show_progress or len(ds) < 1000) as bar:
        row = 0
        for batch in reading.iter(batch_size=256):
            for j in range(len(batch[text_column])):
                where = _row_label(label, split_name, row)
                try:
                    text = _checked_text(batch[text_column][j], where, text_column)
                    if encode is not None:
                        n = LABEL_SPECIAL_TOKENS + len(encode(text))
                        if n > max_label_tokens:
                            raise DatasetError(f"{where}: '{text_column}' is {n} tokens with special tokens, more "
                                               f"than Whisper's {max_label_tokens}; split the clip")
                    duration = (float(batch["duration"][j]) if has_duration
                                else _duration_of(batch[audio_column][j], base_dir, where, audio_column))
                    if not np.isfinite(duration) or duration <= 0:
                        raise DatasetError(f"{where}: duration {duration} s; the audio is empty or the 'duration' "
                                           "column is wrong")
                except DatasetError as e:
                    skipped_invalid += 1
                    if skip_invalid:
                        logger.warning("skipping invalid item: %s", e)
                    elif len(invalid) < MAX_INVALID_LISTED:
                        invalid.append(e)
                    row += 1
                    continue
                if has_duration and row % every == 0:
                    sampled.append((row, duration))
                if duration < min_duration:
                    skipped_short += 1
                elif 0 < max_duration < duration:
                    skipped_long += 1
                else:
                    rows.append(row)
                    durations.append(duration)
                row += 1
            bar.update(len(batch[text_column]))
    if invalid:  # every invalid row named at once (the first only: one run per bad row)
        raise_invalid(spec, invalid, skipped_invalid, "rows")
    if sampled:  # before the bounds' verdict: a column in milliseconds left every row out as too long
        _check_duration_column(ds, sampled, audio_column, base_dir, label, split_name)
    log_left_out(spec, short=skipped_short, long=skipped_long, invalid=skipped_invalid, min_duration=min_duration,
                 max_duration=max_duration, what="items")
    if not rows:
        raise DatasetError(f"{spec}: no usable items ({row} rows; duration bounds {min_duration}..{max_duration} s, "
                           f"{skipped_invalid} invalid)")
    logger.info("%s%s: %d items, audio '%s', text '%s'", spec, f" [{split_name}]" if split_name else "",
                len(rows), audio_column, text_column)
    return DatasetSource(ds, name=label, split=split_name, audio_column=audio_column, text_column=text_column,
                         rows=np.asarray(rows, dtype=np.int64), durations=np.asarray(durations, dtype=np.float32),
                         base_dir=base_dir)


class DatasetStream:
    """One split of a dataset read as it comes (a hub or parquet source streamed when ``options.streaming``, instead
    of downloaded whole; a local one read in order). Items are checked as they arrive: text, audio, and the
    duration bounds (clips outside them are left out and counted)."""

    def __init__(self, spec: str, *, split: str, split_flag: str, options: DatasetOptions = DatasetOptions(),
                 min_duration: float = 0.0, max_duration: float = 30.0) -> None:
        ds, self.split = _open_split(spec, split, split_flag, options, streaming=options.streaming)
        self.audio_column, self.text_column = _columns(ds, spec, options)
        self.dataset = _undecoded(ds.select_columns([self.audio_column, self.text_column]), self.audio_column)
        self.base_dir = source_folder(spec)
        self.name = spec.rstrip("/")
        self.config = options.config
        self.min_duration, self.max_duration = min_duration, max_duration

    def first_sentences(self, count: int) -> list[str]:
        """The text of the stream's first ``count`` rows (its text column alone: no audio read)."""
        import datasets

        ds = self.dataset.select_columns([self.text_column])
        ds = ds.select(range(min(count, len(ds)))) if isinstance(ds, datasets.Dataset) else ds.take(count)
        return [t if isinstance(t, str) else "" for t in (row[self.text_column] for row in ds)]

    def records(self, *, seed: int | None = None, epoch: int = 0, shuffle_buffer: int = 1000, rank: int = 0,
                world_size: int = 1) -> Iterator[Record]:
        """The records in order, or shuffled (``seed`` given: a ``shuffle_buffer``-item buffer, reseeded per
        ``epoch``), this ``rank``'s share of ``world_size``."""
        import datasets

        ds = self.dataset
        known_rows = isinstance(ds, datasets.Dataset)  # a local dataset: items named by their row, in any order
        if seed is not None or world_size > 1:
            if known_rows:
                ds = ds.add_column(_ROW, list(range(len(ds)))).to_iterable_dataset(
                    num_shards=min(64, max(1, len(ds))))
            if seed is not None:
                ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
                ds.set_epoch(epoch)
            if world_size > 1:
                from datasets.distributed import split_dataset_by_node

                ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        left_out = 0
        for n, item in enumerate(_each_row(ds)):
            where = _row_label(self.name, self.split, item.get(_ROW, n) if known_rows else
                               f"{n} of this epoch's stream" + (f" on rank {rank}" if world_size > 1 else ""))
            cell = item[self.audio_column]
            audio_name = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
            if not known_rows and audio_name:  # a position in a shuffled stream: the audio's name finds the row
                where += f" (audio {os.path.basename(audio_name)})"
            text = _checked_text(item[self.text_column], where, self.text_column)
            duration = _duration_of(item[self.audio_column], self.base_dir, where, self.audio_column)
            if duration < self.min_duration or 0 < self.max_duration < duration:
                left_out += 1
                continue
            yield _record(item[self.audio_column], text, duration, where, self.base_dir)
        if left_out:
            logger.info("%s: left out %d clips outside %.2f..%.2f s", self.name, left_out, self.min_duration,
                        self.max_duration)


def _each_row(ds: Any, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """The rows of ``ds`` one by one, every one of them also inside a DataLoader worker: iterating an
    ``IterableDataset`` there gives the worker only its share of the shards (datasets' own split), and a training
    stream's workers take their batches from the whole stream themselves (they trained on half of it)."""
    for batch in ds.iter(batch_size=batch_size):
        columns = list(batch)
        for i in range(len(batch[columns[0]])):
            yield {c: batch[c][i] for c in columns}


def iter_dataset_records(spec: str, *, split: str, split_flag: str, options: DatasetOptions = DatasetOptions(),
                         min_duration: float = 0.0, max_duration: float = 30.0) -> Iterator[Record]:
    """The records of one split in order, read as they come (``DatasetStream``)."""
    return DatasetStream(spec, split=split, split_flag=split_flag, options=options, min_duration=min_duration,
                         max_duration=max_duration).records()
