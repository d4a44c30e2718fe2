"""Training examples from a manifest: ``Record → (log-mel features, decoder label ids)``.

Label layout (Whisper's multitask format, without the leading ``<|startoftranscript|>``, which the
collator puts in front of the decoder input exactly once)::

    speech:       <|zh|> <|transcribe|> <|notimestamps|> text ... <|endoftext|>
    timestamps:   <|zh|> <|transcribe|> <|0.00|> text <|1.40|> <|1.40|> text <|3.02|> <|endoftext|>
    no-speech:    <|zh|> <|transcribe|> <|notimestamps|> <|endoftext|>     (decoder input after the start token)
                  loss targets: <|nospeech|>, -, -, <|endoftext|>            (see ``nospeech_targets``)

A no-speech clip teaches two things in one sequence: right after ``<|startoftranscript|>`` the model must say
``<|nospeech|>`` (what inference's no-speech probability reads), and once the language and task are forced (a
no-speech probability under the threshold) it must end at once rather than invent text. Its item carries
``targets``, the loss target of every position, with the language and task positions left out of the loss, so the
language token is never taught after silence.

English-only models (``*.en``) are decoded with ``<|startoftranscript|> <|notimestamps|>`` (both inference
backends, as transformers and faster-whisper do), so their labels carry no language or task token.

The language token comes from the record's ``language`` when present, else from the run's
``language``; with neither (multilingual / auto) it is left out. In a ``timestamps`` run, records
without ``sentences`` are still used, with the ``<|notimestamps|>`` layout.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from utils.audio import (SAMPLE_RATE, TIME_PRECISION, WINDOW_S, AudioLoadError, ProbeBudget, load_record_audio,
                         slice_check)
from utils.collator import IGNORE_INDEX
from utils.data import ManifestError, Record, RecordSource, Segment, duration_mismatch
from utils.languages import has_unspaced_script, join_texts, optional_language_code
from utils.text import join_hotwords

logger = logging.getLogger(__name__)


class _WarningBudget:
    """Lets the first ``limit`` warnings of a kind through, then says that the rest are not logged. Counted per
    process: each DataLoader worker counts its own, afresh every epoch (workers are started again)."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what, self.seen = limit, what, 0

    def count(self) -> bool:
        self.seen += 1
        if self.seen == self.limit + 1:
            logger.warning("more %s: not logged", self.what)
        return self.seen <= self.limit


_MISMATCHES = _WarningBudget(5, "clips whose audio length differs from their 'duration'")
_MISMATCHED: set[str] = set()  # manifest lines whose mismatch this process has seen

MAX_TIMESTAMP = WINDOW_S  # seconds; the last timestamp token is <|30.00|>


@dataclass(frozen=True)
class LabelTokens:
    """Special token ids of a Whisper tokenizer, looked up once."""

    start_of_transcript: int
    end_of_text: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int  # id of <|0.00|>
    tasks: dict[str, int]
    languages: dict[str, int]  # code → id
    multilingual: bool = True  # False for English-only models: no language/task tokens in their prompt

    def prompt(self, language: str | None, task: str, *, timestamps: bool = False) -> list[int]:
        """Decoder prompt: ``<|startoftranscript|>`` [language] [task] [``<|notimestamps|>``]."""
        ids = [self.start_of_transcript]
        if self.multilingual:
            if language is not None:
                ids.append(self.languages[language])
            ids.append(self.tasks[task])
        if not timestamps:
            ids.append(self.no_timestamps)
        return ids

    @classmethod
    def from_tokenizer(cls, tokenizer) -> LabelTokens:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        vocab = tokenizer.get_vocab()

        def tid(token: str) -> int:
            if token not in vocab:
                raise ValueError(f"the tokenizer has no {token} token; is it a Whisper tokenizer?")
            return int(vocab[token])

        no_speech = "<|nospeech|>" if "<|nospeech|>" in vocab else "<|nocaptions|>"
        languages = {code: int(vocab[f"<|{code}|>"]) for code in LANGUAGES if f"<|{code}|>" in vocab}
        return cls(
            start_of_transcript=tid("<|startoftranscript|>"),
            end_of_text=tid("<|endoftext|>"),
            no_timestamps=tid("<|notimestamps|>"),
            no_speech=tid(no_speech),
            timestamp_begin=tid("<|0.00|>"),
            tasks={"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")},
            languages=languages,
            # English-only vocabularies have 51864 entries, multilingual ones 51865 (51866 for large-v3)
            multilingual=len(tokenizer) >= 51865,
        )

    def timestamp(self, seconds: float) -> int:
        """Id of the timestamp token nearest to ``seconds`` (clamped to 0..30 s)."""
        seconds = min(max(seconds, 0.0), MAX_TIMESTAMP)
        return self.timestamp_begin + int(round(seconds / TIME_PRECISION))


MAX_PROMPT_TOKENS = 223  # previous-text tokens at most (the reference decoder keeps n_text_ctx // 2 - 1)
MAX_DECODER_POSITIONS = 448  # Whisper's text context: prompt + start + labels must fit


def previous_sentences(manifest: RecordSource) -> dict[int, str]:
    """{item index: the sentence said just before it in the same recording}, for items cut from one long
    recording (same ``audio.path``, ordered by ``audio.start_time``)."""
    by_path: dict[str, list[tuple[float, int, str]]] = {}
    for i in range(len(manifest)):
        record = manifest[i]
        if record.start_time is not None:
            by_path.setdefault(record.audio_path, []).append((record.start_time, i, record.sentence))
    previous: dict[int, str] = {}
    for items in by_path.values():
        items.sort()
        earlier = -1  # the last item that starts before items[k] (a repeated line starts with it: not its prompt)
        for k in range(1, len(items)):
            if items[k][0] > items[k - 1][0]:
                earlier = k - 1
            if earlier >= 0 and items[earlier][2].strip():
                previous[items[k][1]] = items[earlier][2]
    return previous


_PUNCT = "，。、；：,.!?！？;:\"'“”‘’（）()《》·-—…"


def hotword_candidates(sentence: str) -> list[str]:
    """The words of ``sentence`` a user could give as hotwords: whole words of two or more characters (Chinese
    segmented with snownlp, spaced text split on spaces), punctuation stripped, first occurrence order."""
    sentence = sentence.strip()
    if not sentence:
        return []
    if has_unspaced_script(sentence):  # Chinese/Japanese: segmented; Korean and others: split on spaces
        from snownlp import SnowNLP  # a segmenter that ships in a package (already needed for sentiment)

        words = SnowNLP(sentence).words
    else:
        words = sentence.split()
    words = (w.strip(_PUNCT + " ") for w in words)
    return list(dict.fromkeys(w for w in words if len(w) >= 2))


def sample_hotwords(sentence: str, rng: np.random.Generator, most: int = 3, other: str | None = None) -> str:
    """Comma-separated hotwords as a user would type them: one to ``most`` whole words of ``sentence``, and with
    ``other`` (another clip's text) one or two of its words that ``sentence`` does not contain, in random order —
    a real hotword list covers a whole recording, so most of its words are absent from any one clip, and a model
    trained only on present hotwords learns to write them whether heard or not."""
    candidates = hotword_candidates(sentence)
    picks = []
    if candidates:
        count = min(len(candidates), int(rng.integers(1, most + 1)))
        picks = [candidates[i] for i in sorted(rng.choice(len(candidates), size=count, replace=False))]
    if other:
        absent = [w for w in hotword_candidates(other) if w not in sentence]
        if absent:
            count = min(len(absent), int(rng.integers(1, 3)))
            picks += [absent[i] for i in rng.choice(len(absent), size=count, replace=False)]
            picks = [picks[i] for i in rng.permutation(len(picks))]
    return join_hotwords(list(dict.fromkeys(picks)))  # as decoding joins a user's list


def build_labels(
    record: Record,
    encode: Callable[[str], Sequence[int]],
    tokens: LabelTokens,
    *,
    language: str | None,
    task: str,
    timestamps: bool,
    time_scale: float = 1.0,
) -> list[int]:
    """Decoder target ids for one record (no ``<|startoftranscript|>``; ends with ``<|endoftext|>``).

    Args:
        record: the manifest record.
        encode: text → token ids without special tokens.
        tokens: special token ids.
        language: the run's language code, used when the record has none (None = no language token).
        task: ``transcribe`` or ``translate``.
        timestamps: use the record's ``sentences`` as timestamped segments where present.
        time_scale: multiply segment times by this (speed perturbation changes the clip length).
    """
    code = None  # the language token's code (multilingual models only)
    if tokens.multilingual:
        code = optional_language_code(record.language) if record.language else language
        if code is not None and code not in tokens.languages:
            raise ValueError(f"the tokenizer has no language token for {code!r}")
    if record.is_nospeech:  # the forced-language prompt; nospeech_targets gives its loss targets
        return [*tokens.prompt(code, task)[1:], tokens.end_of_text]
    ids = tokens.prompt(code, task, timestamps=True)[1:]  # [language] [task], nothing for English-only models
    if timestamps and record.sentences:
        for seg in record.sentences:
            ids.append(tokens.timestamp(seg.start * time_scale))
            ids.extend(encode(seg.text))
            ids.append(tokens.timestamp(seg.end * time_scale))
    else:
        ids.append(tokens.no_timestamps)
        ids.extend(encode(record.sentence))
    ids.append(tokens.end_of_text)
    return ids


def nospeech_targets(labels: Sequence[int], tokens: LabelTokens) -> list[int]:
    """Loss targets of a no-speech clip's ``labels`` (``build_labels``): ``<|nospeech|>`` after the start token, no
    loss on the language/task positions, ``<|endoftext|>`` after ``<|notimestamps|>``."""
    if len(labels) < 2 or labels[-1] != tokens.end_of_text:
        raise ValueError("a no-speech label is the forced prompt plus <|endoftext|>")
    return [tokens.no_speech, *[IGNORE_INDEX] * (len(labels) - 2), tokens.end_of_text]


def log_mel_features(samples: np.ndarray, mel_filters: np.ndarray, *, n_fft: int = 400, hop_length: int = 160,
                     n_samples: int = 30 * SAMPLE_RATE) -> np.ndarray:
    """Whisper's log-mel spectrogram of ``samples`` zero-padded to 30 s, computing only the speech part.

    Equal to ``WhisperFeatureExtractor`` output (within float rounding), but the STFT runs over the
    clip only: frames lying wholly in the zero padding are all-zero, i.e. ``log10(1e-10)`` before the
    dynamic-range clamp, so a 3 s clip costs a tenth of a full 30 s window.

    Args:
        samples: float32 (n,) at 16 kHz; longer than ``n_samples`` is truncated.
        mel_filters: (n_fft // 2 + 1, n_mels) filter bank (``feature_extractor.mel_filters``).

    Returns:
        float32 (n_mels, n_samples // hop_length).
    """
    samples = np.asarray(samples, dtype=np.float32)[:n_samples]
    n_frames = n_samples // hop_length
    half = n_fft // 2
    # frames t with t * hop - half >= len(samples) see only zeros; compute frames below that, on a
    # zero-padded piece long enough that none of them reaches the piece's reflected end
    needed = min(n_frames, (len(samples) + half) // hop_length + 1)
    piece_len = min(n_samples, needed * hop_length + half + 1)
    piece = np.zeros(piece_len, dtype=np.float32)
    piece[: len(samples)] = samples[:piece_len]
    window = torch.hann_window(n_fft)
    stft = torch.stft(torch.from_numpy(piece), n_fft, hop_length, window=window, return_complex=True)
    power = (stft[:, :needed].abs() ** 2).contiguous()
    filters = torch.from_numpy(np.ascontiguousarray(mel_filters.T, dtype=np.float32))
    mel = torch.full((filters.shape[0], n_frames), 1e-10, dtype=torch.float32)
    mel[:, :needed] = filters @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


class SpeechDataset(torch.utils.data.Dataset):
    """Manifest items as ``{"input_features": float32 (n_mels, 3000), "labels": list[int]}``.

    Features are computed once per item, here (in the DataLoader workers), never again in the collator.
    """

    def __init__(
        self,
        manifest: RecordSource,
        feature_extractor,
        tokenizer,
        *,
        language: str | None,
        task: str = "transcribe",
        timestamps: bool = False,
        augmenter: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, float]] | None = None,
        seed: int = 0,
        prompt_prob: float = 0.0,
    ) -> None:
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be transcribe or translate, got {task!r}")
        self.manifest = manifest
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.language = optional_language_code(language)
        self.task = task
        self.timestamps = timestamps
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0
        self.tokens = LabelTokens.from_tokenizer(tokenizer)
        if not self.tokens.multilingual and task != "transcribe":
            raise ValueError(f"an English-only model cannot be trained to {task}; use a multilingual model")
        if not 0.0 <= prompt_prob <= 1.0:
            raise ValueError(f"prompt_prob must be in [0, 1], got {prompt_prob}")
        self.prompt_prob = prompt_prob
        self.previous = previous_sentences(manifest) if prompt_prob > 0 else {}  # index → preceding sentence

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness depends on (seed, epoch, index), so a resumed run repeats it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest)

    def layout(self) -> tuple[object, str]:
        """(what identifies how the data is cut into items, as JSON-able data; a description): see ``data_layout``.
        The clips are told apart by their count and durations (other data of the same size differs in them)."""
        durations = hashlib.sha1(np.asarray(self.manifest.durations, dtype=np.float32).tobytes()).hexdigest()
        return {"clips": len(self), "durations": durations}, f"{len(self)} clips"

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def record(self, index: int) -> Record:
        return self.manifest[index]

    def __getitem__(self, index: int) -> dict:
        other = None
        if self.prompt_prob > 0 and len(self.manifest) > 1:  # a distractor text for hotword prompts (_prompt)
            rng = np.random.default_rng((self.seed, self.epoch, index, 11))
            other = self.manifest[int((index + rng.integers(1, len(self.manifest))) % len(self.manifest))].sentence
        return self.example(self.manifest[index], index, self.manifest.location(index), other=other)

    def example(self, record: Record, index: int, where: str, *, other: str | None = None) -> dict:
        """The training item of ``record`` (``index`` keys its randomness and the encoder cache; ``where`` names it
        in errors; ``other``: another item's text, for hotword distractors)."""
        samples, time_scale = self.samples(record, index, where)
        labels = build_labels(record, self._encode, self.tokens, language=self.language, task=self.task,
                              timestamps=self.timestamps, time_scale=time_scale)
        item = {"input_features": self.features(samples), "labels": labels, "index": index}
        if record.is_nospeech:
            item["targets"] = nospeech_targets(labels, self.tokens)
        prompt = self._prompt(index, record, labels, other)
        if prompt:
            item["prompt"] = prompt
        return item

    def samples(self, record: Record, index: int, where: str, speed: bool = True) -> tuple[np.ndarray, float]:
        """(waveform, time scale) of ``record``, augmented with randomness keyed by (seed, epoch, ``index``);
        ``speed`` False: at its own speed (the augmentation's other steps as drawn with it)."""
        try:
            samples = load_record_audio(record)
        except AudioLoadError as e:  # name the manifest line, the thing a user edits
            raise AudioLoadError(f"{where}: {e}") from e
        seconds = len(samples) / SAMPLE_RATE
        if seconds > WINDOW_S + 0.01:  # Whisper would hear its first 30 s and learn the whole text for them
            raise AudioLoadError(f"{where}: the audio is {seconds:.2f} s, longer than Whisper's {WINDOW_S:.0f} s "
                                 f"window, but 'duration' says {record.duration:.2f} s; fix 'duration' (clips longer than "
                                 "--max_audio_len are left out by it) or split the clip")
        # said once a line (it was said at every read: five times in a 2-step run), and not for a file whose header
        # the check at load read (check_clips said it then; of the files libsndfile cannot read, it asks ffprobe
        # about a few only: those are said here)
        if duration_mismatch(seconds, record.duration) and where not in _MISMATCHED:
            _MISMATCHED.add(where)
            told = record.audio_bytes is None and slice_check(record.audio_path, probes=ProbeBudget(0))[1] is not None
            if not told and _MISMATCHES.count():
                logger.warning("%s: the audio is %.2f s, 'duration' says %.2f s (packing and the duration bounds go "
                               "by 'duration'): fix the manifest", where, seconds, record.duration)
        if self.augmenter is None:
            return samples, 1.0
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return self.augmenter(samples, rng) if speed else self.augmenter(samples, rng, speed=False)

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel features (n_mels, 3000) of a waveform padded to 30 s."""
        fe = self.feature_extractor
        return log_mel_features(samples, fe.mel_filters, n_fft=fe.n_fft, hop_length=fe.hop_length,
                                n_samples=fe.n_samples)

    def _prompt(self, index: int, record: Record, labels: Sequence[int], other: str | None) -> list[int]:
        """Previous-text prompt ids for item ``index`` with probability ``prompt_prob`` (else []): the preceding
        sentence of the same recording when there is one, else hotwords: whole words of the item's own text, half
        the time mixed with words of ``other`` that this one does not contain (``sample_hotwords``)."""
        if self.prompt_prob <= 0 or record.is_nospeech:
            return []
        rng = np.random.default_rng((self.seed, self.epoch, index, 7))
        if rng.random() >= self.prompt_prob:
            return []
        text = self.previous.get(index)
        if not text:
            text = sample_hotwords(record.sentence, rng, other=other if rng.random() < 0.5 else None)
        if not text or not text.strip():
            return []
        room = min(MAX_PROMPT_TOKENS, MAX_DECODER_POSITIONS - len(labels) - 2)  # + <|startofprev|>, <|sot|>
        return self._encode(" " + text.strip())[-room:] if room > 0 else []


def window_clip_limit(batch_size: int) -> int:
    """Most clips a packed window may hold when batches are ``batch_size`` clips: the batch plus a quarter of it.
    Without a limit a batch smaller than a window's clips (~6.6 demo clips in 28 s) takes a whole window, so two
    processes with batches of 4 took ~13 clips a step; the quarter's slack keeps batches of 8 as they were (an exact
    limit of 8 needed 53 windows for the demo's 263 clips instead of 40: training 79.8 → 114.3 s, 2-core Xeon)."""
    return batch_size + batch_size // 4


def data_layout_parts(dataset: torch.utils.data.Dataset) -> tuple[object, str]:
    """``dataset.layout()`` where it has one, else its length: (JSON-able data, description)."""
    if hasattr(dataset, "layout"):
        return dataset.layout()
    return {"items": len(dataset)}, f"{len(dataset)} items"


def data_layout(dataset: torch.utils.data.Dataset) -> tuple[str, str]:
    """(fingerprint, description) of how a training set is cut into items: its clips (count and durations), and
    packed, which clips each window holds and which windows each batch holds. A checkpoint records it, so that a run
    resumed on a differently cut set (another batch size or packing) is told its position in the epoch is only
    approximate."""
    structure, described = data_layout_parts(dataset)
    digest = hashlib.sha1(json.dumps(structure, separators=(",", ":")).encode()).hexdigest()[:16]
    return digest, described


def _label_tokens(dataset: SpeechDataset, record: Record) -> int:
    """Tokens of ``record``'s part of a packed label: its text and a segment's two timestamps, or, in a timestamps
    run, each of its ``sentences`` so (a window of clips with 12 timed segments each was counted as one segment a
    clip, its label grew to 561 tokens, past the decoder's 448, and training stopped with an IndexError)."""
    if dataset.timestamps and record.sentences:
        return sum(len(dataset._encode(seg.text)) + 2 for seg in record.sentences)
    return len(dataset._encode(record.sentence)) + 2


class PackedSpeechDataset(torch.utils.data.Dataset):
    """Several clips of ``dataset`` in one 30 s window: the encoder costs the same for 3 s of speech or 30 s, so a
    window full of clips trains on 5–10 times more speech for about the same compute (AISHELL clips are ~5 s).

    Packs are fixed for the run (drawn once with ``seed``: a shuffle within each language, then first-fit up to
    ``max_seconds`` of audio, ``max_clips`` clips and Whisper's label limit), so cached encoder outputs stay valid;
    the trainer shuffles their order every epoch. ``max_clips`` follows the batch size (``window_clip_limit``): a
    window holds at most a quarter more clips than a batch, so a step takes within about a quarter of the clips it
    takes unpacked, also when several processes or gradient accumulation each take a small batch (demo data: batches
    of 4 hold 4.8–5.0 clips on average, of 8 8.8). A pack's audio is its clips, each augmented on its own, joined by
    ``gap_seconds`` of silence; its label is their texts in order (joined as their scripts join: "天气。Deploy it
    请用") and, in a timestamps run, one timestamped segment per clip (or per ``sentences`` entry, shifted). No-speech
    clips stay alone, and about one pack in ``single_every`` is a single clip, so the model keeps seeing one short
    clip padded with silence, which is how it is used on short clips. Packs carry no previous-text prompt.
    """

    def __init__(self, dataset: SpeechDataset, *, max_seconds: float = 28.0, max_clips: int | None = None,
                 gap_seconds: float = 0.3, single_every: int = 4) -> None:
        if max_clips is not None and max_clips < 1:
            raise ValueError(f"max_clips must be >= 1, got {max_clips}")
        self.dataset = dataset
        self.gap_seconds = gap_seconds
        self.tokens = dataset.tokens
        manifest = dataset.manifest
        rng = np.random.default_rng((dataset.seed, 31))
        durations = np.asarray(manifest.durations, dtype=np.float64)
        groups: dict[str | None, list[int]] = {}
        packs: list[list[int]] = []
        for i in range(len(manifest)):
            record = manifest[i]
            if record.is_nospeech:
                packs.append([i])
            else:
                # by the language the label gets: "zh" and "Chinese" (and a line without one, under --language=zh)
                # share windows (each spelling packed apart before)
                code = optional_language_code(record.language) if record.language else dataset.language
                groups.setdefault(code, []).append(i)
        for items in groups.values():
            order = [items[k] for k in rng.permutation(len(items))]
            current: list[int] = []
            seconds = tokens = 0.0
            for i in order:
                n = _label_tokens(dataset, manifest[i])
                fits = current and seconds + gap_seconds + durations[i] <= max_seconds and \
                    tokens + n <= MAX_DECODER_POSITIONS - MAX_PROMPT_TOKENS // 4 and \
                    (max_clips is None or len(current) < max_clips)
                if current and (not fits or rng.integers(single_every) == 0 and len(current) == 1):
                    packs.append(current)
                    current, seconds, tokens = [], 0.0, 0.0
                current.append(i)
                seconds += durations[i] + (gap_seconds if len(current) > 1 else 0.0)
                tokens += n
            if current:
                packs.append(current)
        self.packs = [packs[k] for k in rng.permutation(len(packs))]
        clips = sum(len(p) for p in self.packs)
        logger.info("packed %d clips into %d windows (%.1f clips per window, %.1f s of audio on average)", clips,
                    len(self.packs), clips / max(1, len(self.packs)),
                    float(durations.sum()) / max(1, len(self.packs)))

    @property
    def clips(self) -> int:
        return sum(len(p) for p in self.packs)

    def clip_counts(self) -> list[int]:
        """Clips in each window, by index."""
        return [len(p) for p in self.packs]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.packs)

    def layout(self) -> tuple[object, str]:
        return {"packs": self.packs, "clips": data_layout_parts(self.dataset)[0]}, \
            f"{self.clips} clips in {len(self)} windows"

    def _window_clips(self, members: list[int], gap: int) -> list[tuple[int, np.ndarray, float]]:
        """(index, waveform, time scale) of a window's clips, as augmented, within Whisper's window with ``gap``
        samples between two: packs are planned by 'duration', so clips that speed augmentation slowed past it are
        read at their own speed, the last first, until they fit (the clip that no longer fitted and every clip after
        it sat the epoch out, without a word: 8 of the 263 demo clips an epoch at 0.9); where clips longer than their
        'duration' says (check_clips warned at load) still do not fit, the last ones are left out, with a warning."""
        ds, manifest = self.dataset, self.dataset.manifest
        clips = [(i, *ds.samples(manifest[i], i, manifest.location(i))) for i in members]
        limit = int(WINDOW_S * SAMPLE_RATE)
        total = sum(len(samples) for _, samples, _ in clips) + gap * (len(clips) - 1)
        for k in reversed(range(len(clips))):
            i, samples, scale = clips[k]
            if total > limit and scale > 1.0:
                clips[k] = (i, *ds.samples(manifest[i], i, manifest.location(i), speed=False))
                total += len(clips[k][1]) - len(samples)
        while total > limit and len(clips) > 1:
            i, samples, _ = clips.pop()
            total -= len(samples) + gap
            logger.warning("%s: left out of its training window this epoch: the window's clips are longer than their "
                           "'duration's say (%.1f s of audio for 30 s); fix 'duration'", manifest.location(i),
                           (total + len(samples) + gap) / SAMPLE_RATE)
        return clips

    def __getitem__(self, index: int) -> dict:
        ds, manifest = self.dataset, self.dataset.manifest
        members = self.packs[index]
        if len(members) == 1:
            item = ds.example(manifest[members[0]], members[0], manifest.location(members[0]))
            item.pop("prompt", None)
            return {**item, "index": index, "clips": 1}
        gap = np.zeros(int(round(self.gap_seconds * SAMPLE_RATE)), dtype=np.float32)
        clips = self._window_clips(members, len(gap))
        pieces, segments, texts = [], [], []
        offset = 0
        for i, samples, scale in clips:
            record = manifest[i]
            if pieces:
                pieces.append(gap)
                offset += len(gap)
            start = offset / SAMPLE_RATE
            if record.sentences and ds.timestamps:
                segments += [Segment(start + seg.start * scale, start + seg.end * scale, seg.text)
                             for seg in record.sentences]
            else:
                segments.append(Segment(start, start + len(samples) / SAMPLE_RATE, record.sentence))
            texts.append(record.sentence.strip())
            pieces.append(samples)
            offset += len(samples)
        samples = np.concatenate(pieces)
        first = manifest[members[0]]  # each two texts joined as their scripts join (an English line in Chinese ones)
        packed = Record(audio_path=first.audio_path, sentence=join_texts(texts),
                        duration=len(samples) / SAMPLE_RATE, language=first.language, sentences=tuple(segments))
        labels = build_labels(packed, ds._encode, ds.tokens, language=ds.language, task=ds.task,
                              timestamps=ds.timestamps)
        return {"input_features": ds.features(samples), "labels": labels, "index": index, "clips": len(texts)}


class ClipBatches(torch.utils.data.Dataset):
    """Packed windows grouped into batches of about ``batch_clips`` clips each, so that a batch size counts clips
    whether or not the audio is packed: a step learns from as many clips as it would unpacked (and the schedule,
    warmup and epochs keep their meaning), from 1–2 windows instead of ``batch_clips``.

    A group is a run of windows in a seeded order, closed when the next window would take its clip count further
    from ``batch_clips`` than it is. Groups are fixed for the run (like the packs); the trainer shuffles their
    order every epoch. Item ``i`` is the list of group ``i``'s items (the trainer loads one group per batch).
    """

    batched = True  # the trainer reads this: one item is a whole batch

    def __init__(self, dataset: torch.utils.data.Dataset, clip_counts: Sequence[int], *, batch_clips: int,
                 seed: int = 0) -> None:
        if len(clip_counts) != len(dataset):
            raise ValueError(f"{len(clip_counts)} clip counts for {len(dataset)} items")
        if batch_clips < 1:
            raise ValueError(f"batch_clips must be >= 1, got {batch_clips}")
        self.dataset, self.batch_clips = dataset, batch_clips
        self.tokens = getattr(dataset, "tokens", None)
        order = np.random.default_rng((seed, 37)).permutation(len(dataset)).tolist()
        self.groups: list[list[int]] = []
        current: list[int] = []
        count = 0
        for i in order:
            n = int(clip_counts[i])
            if current and abs(count + n - batch_clips) >= abs(count - batch_clips):
                self.groups.append(current)
                current, count = [], 0
            current.append(i)
            count += n
        if current:
            self.groups.append(current)
        self.clips_per_group = [sum(int(clip_counts[i]) for i in g) for g in self.groups]
        logger.info("batches of about %d clips: %d batches of %.1f windows and %.1f clips on average", batch_clips,
                    len(self.groups), len(dataset) / max(1, len(self.groups)),
                    sum(self.clips_per_group) / max(1, len(self.groups)))

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def layout(self) -> tuple[object, str]:
        inner, described = data_layout_parts(self.dataset)
        return {"groups": self.groups, "items": inner}, f"{described} in {len(self)} batches"

    def __getitem__(self, index: int) -> list[dict]:
        return [self.dataset[i] for i in self.groups[index]]


class StreamingSpeechDataset(torch.utils.data.IterableDataset):
    """Training items from a dataset read as a stream (``utils.hf_data.DatasetStream``), pass after pass without
    end: each pass reshuffled (``shuffle_buffer`` items, seeded by seed and pass), this rank's share of it
    (``rank``/``world_size``), split again across DataLoader workers. The run's length is set by ``max_steps``;
    as no rank ever runs out, every rank takes the same number of steps.

    Items are checked as they arrive: clips outside the duration bounds are left out; a label longer than
    Whisper's limit is an error naming the item.
    """

    def __init__(self, stream, feature_extractor, tokenizer, *, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, **options) -> None:
        self.stream = stream
        self.builder = SpeechDataset([], feature_extractor, tokenizer, **options)  # builds items; holds none
        self.tokens = self.builder.tokens
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.skip = 0
        self.batch_size = 1

    def set_epoch(self, epoch: int) -> None:  # the trainer's epoch is the whole run here
        self.builder.set_epoch(epoch)

    def layout(self) -> tuple[object, str]:
        """(what identifies the stream's items, as JSON-able data; a description): see ``data_layout``. Its source,
        config, split, columns, duration bounds and shuffle buffer set which items come in which order (the seed is
        recorded apart)."""
        s = self.stream
        parts = {"stream": s.name, "config": s.config, "split": s.split, "columns": [s.audio_column, s.text_column],
                 "duration_bounds": [s.min_duration, s.max_duration], "shuffle_buffer": self.shuffle_buffer}
        return parts, f"the stream {s.name}" + (f" (split {s.split})" if s.split else "")

    def legacy_fingerprint(self) -> str:
        """The fingerprint checkpoints of the version before ``layout`` recorded for this stream."""
        return f"stream {self.stream.name}, shuffle buffer {self.shuffle_buffer}"

    def set_skip(self, items: int, batch_size: int = 1) -> None:
        """Leave out the first ``items`` items of this rank's stream (a resumed run has trained on them), read in
        batches of ``batch_size``: DataLoader workers take whole batches in turn, so the batches they deliver (round
        robin) hold the stream's items in order, and the first ``items`` are exactly the ones trained on."""
        self.skip, self.batch_size = items, max(1, batch_size)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        position, last_text = 0, None
        for pass_index in itertools.count():
            seen = 0
            for record in self.stream.records(seed=self.builder.seed, epoch=pass_index, rank=self.rank,
                                              world_size=self.world_size, shuffle_buffer=self.shuffle_buffer):
                seen += 1
                position += 1
                # the workers take the batches after the skipped items in turn, starting with worker 0
                if position <= self.skip or ((position - 1 - self.skip) // self.batch_size) % workers != worker:
                    continue
                item = self.builder.example(record, position - 1, record.audio_path, other=last_text)
                if len(item["labels"]) + 1 > MAX_DECODER_POSITIONS:  # one message (finetune.py), not a worker's traceback
                    raise ManifestError(f"{record.audio_path}: the label is {len(item['labels']) + 1} tokens, more "
                                        f"than Whisper's {MAX_DECODER_POSITIONS}; split the clip, or fix or remove "
                                        "that row")
                last_text = record.sentence
                yield item
            if seen == 0:
                raise ValueError(f"{self.stream.name}: the stream has no usable item (this rank's share, within the "
                                 "duration bounds)")


class ReplayMix(torch.utils.data.Dataset):
    """The training set with general ("replay") data mixed in, to limit forgetting.

    Every epoch holds all of ``main`` plus ``round(clips of main * ratio / (1 - ratio))`` replay items (one clip
    each), so replay makes up ``ratio`` of the epoch's clips (``main`` may be packed windows of several clips);
    they are taken in a seeded order that goes through the whole replay set before repeating. A replay item's
    ``index`` is ``len(main) + its index in the replay set``, the same in every epoch (the trainer's encoder cache
    is keyed by it).
    """

    def __init__(self, main: SpeechDataset, replay: SpeechDataset, *, ratio: float, seed: int = 0) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"replay ratio must be in (0, 1), got {ratio}")
        if len(replay) == 0:
            raise ValueError("the replay set is empty")
        self.main, self.replay, self.ratio, self.seed = main, replay, ratio, seed
        main_clips = sum(main.clip_counts()) if hasattr(main, "clip_counts") else len(main)  # packed: windows
        self.per_epoch = max(1, round(main_clips * ratio / (1.0 - ratio)))
        self.tokens = main.tokens
        self.previous = getattr(main, "previous", {})  # packed windows (PackedSpeechDataset) carry no prompt
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.main.set_epoch(epoch)
        self.replay.set_epoch(epoch)
        n = len(self.replay)
        start = epoch * self.per_epoch  # position in an endless sequence of seeded permutations of the replay set
        order = []
        for cycle in range(start // n, (start + self.per_epoch - 1) // n + 1):
            order.extend(np.random.default_rng((self.seed, cycle, 11)).permutation(n).tolist())
        offset = start - (start // n) * n
        self.chosen = order[offset: offset + self.per_epoch]

    def __len__(self) -> int:
        return len(self.main) + self.per_epoch

    def layout(self) -> tuple[object, str]:
        inner, described = data_layout_parts(self.main)
        return ({"main": inner, "replay": [len(self.replay), self.per_epoch]},
                f"{described} + {self.per_epoch} replay clips an epoch")

    def clip_counts(self) -> list[int]:
        """Clips in each item, by index (main's windows, then one per replay clip)."""
        main = self.main.clip_counts() if hasattr(self.main, "clip_counts") else [1] * len(self.main)
        return [*main, *[1] * self.per_epoch]

    def __getitem__(self, index: int) -> dict:
        if index < len(self.main):
            return self.main[index]
        k = self.chosen[index - len(self.main)]
        item = self.replay[k]
        item["index"] = len(self.main) + k
        return item
