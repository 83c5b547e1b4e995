"""The model registry: which models exist (name, version, URL, size, SHA256, a short card),
and a local cache of model files so each is downloaded once and verified before use.

The registry is data, not code: the package ships ``registry.json``; a site or user adds or
overrides entries with ``$XRAY2XRAY_REGISTRY`` (a JSON file of the same shape). The size and
SHA256 pin exactly the bytes a name means, so a changed or corrupted download is refused
rather than run. Files go to ``<cache>/<name>-<version>.safetensors`` where ``<cache>`` is
``$XRAY2XRAY_MODELS`` or the user cache dir; a download lands under a temporary name and is
moved into place only once verified, so an interrupted fetch never leaves a bad model behind.
An entry whose url is ``package://PACKAGE/PATH`` names a file shipped inside a Python
package (the built-in demo model): it resolves in place, without a download.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from tqdm import tqdm

from ..conventions import MODELS_ENV, REGISTRY_ENV, REGISTRY_FORMAT, models_cache_dir
from ..errors import FileNotFoundInputError, InputError
from ..fileutil import atomic_path, sha256_file
from .model_file import NAME_RE, ModelFileError, load_model_file, read_card

PathLike = Union[str, Path]
DEFAULT_MODEL = "xray2xray-demo"
SUFFIX = ".safetensors"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------------------- registry
def _shipped_registry() -> Path:
    return Path(__file__).resolve().parent / "registry.json"


def _read_registry(path: Path) -> Dict[str, Dict[str, Any]]:
    """Entries of one registry file by name; urls without a scheme are paths relative to it."""
    if not path.is_file():
        raise FileNotFoundInputError("no such registry file", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"registry is not valid JSON: {exc}", path) from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT \
            or not isinstance(data.get("models"), list):
        raise InputError(f'registry must be {{"format": "{REGISTRY_FORMAT}", "models": [...]}}', path)
    entries = {}
    for i, e in enumerate(data["models"]):
        where = f"registry entry {i + 1}"
        if not isinstance(e, dict):
            raise InputError(f"{where} must be an object", path)
        missing = [k for k in ("name", "version", "url", "sha256", "size") if k not in e]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}", path)
        for key in ("name", "version"):
            if not isinstance(e[key], str) or not NAME_RE.match(e[key]):
                raise InputError(f"{where}: {key} must be letters, digits and . _ + - "
                                 f"(got {e[key]!r})", path)
        if not isinstance(e["sha256"], str) or not _HEX64.match(e["sha256"].lower()):
            raise InputError(f"{where} ({e['name']}): sha256 must be 64 hex digits", path)
        if not isinstance(e["size"], int) or isinstance(e["size"], bool) or e["size"] < 0:
            raise InputError(f"{where} ({e['name']}): size must be a byte count", path)
        if not isinstance(e["url"], str) or not e["url"]:
            raise InputError(f"{where} ({e['name']}): url must be a string", path)
        if not isinstance(e.get("card", {}), dict):
            raise InputError(f"{where} ({e['name']}): card must be an object", path)
        entry = dict(e, sha256=e["sha256"].lower(), card=dict(e.get("card", {})),
                     registry=str(path))
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", entry["url"]):
            entry["url"] = (path.parent / entry["url"]).resolve().as_uri()
        entries[entry["name"]] = entry
    return entries


def load_registry() -> Dict[str, Dict[str, Any]]:
    """Known models by name: the shipped registry, then ``$XRAY2XRAY_REGISTRY`` over it."""
    entries = _read_registry(_shipped_registry())
    extra = os.environ.get(REGISTRY_ENV)
    if extra:
        entries.update(_read_registry(Path(extra).expanduser()))
    return entries


def cache_dir() -> Path:
    """``$XRAY2XRAY_MODELS``, else ``<user cache dir>/xray2xray/models``."""
    return models_cache_dir()


def _cache_path(name: str, version: str) -> Path:
    return cache_dir() / f"{name}-{version}{SUFFIX}"


def _package_file(url: str) -> Optional[Path]:
    """The file a ``package://PACKAGE/PATH`` url names (None for other urls)."""
    if not url.startswith("package://"):
        return None
    package, _, rel = url[len("package://"):].partition("/")
    try:
        root = Path(str(resources.files(package)))
    except (ImportError, TypeError, ValueError) as exc:
        raise InputError(f"registry url {url}: cannot find package {package!r} ({exc})") from None
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise InputError(f"registry url {url} points outside its package")
    return path


def _entry(name: str) -> Dict[str, Any]:
    entries = load_registry()
    if name not in entries:
        known = sorted(set(entries) | {m["name"] for m in _imported()})
        raise InputError(f"unknown model {name!r} (known: {', '.join(known) or 'none'}; "
                         f"add one with `xray2xray models import FILE` or ${REGISTRY_ENV})")
    return entries[name]


def _verify(path: Path, entry: Dict[str, Any]) -> Optional[str]:
    """None when ``path`` has the entry's size and SHA256, else what is wrong."""
    size = path.stat().st_size
    if size != entry["size"]:
        return f"size is {size} bytes, the registry says {entry['size']}"
    got = sha256_file(path)
    if got != entry["sha256"]:
        return f"SHA256 mismatch: expected {entry['sha256']}, got {got}"
    return None


# ----------------------------------------------------------------------------- fetch
def _download(entry: Dict[str, Any], target: Path, progress: bool) -> None:
    """Stream the entry's url to a temporary file beside ``target``, hashing on the way;
    moved onto ``target`` only when size and SHA256 match."""
    name, url = entry["name"], entry["url"]
    h, n = hashlib.sha256(), 0
    with atomic_path(target) as tmp:
        try:
            response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = (f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError)
                      else getattr(exc, "reason", None) or exc)
            raise InputError(f"cannot download model {name} from {url}: {reason}") from None
        with response, open(tmp, "wb") as out, tqdm(
                total=entry["size"], unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not progress, file=sys.stderr, leave=False) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except OSError as exc:   # connection reset, timeout mid-download
                    raise InputError(f"download of model {name} from {url} failed after "
                                     f"{n} bytes: {exc}") from None
                if not block:
                    break
                n += len(block)
                if n > entry["size"]:
                    raise ModelFileError(f"download of model {name} from {url} is larger than "
                                         f"the registry's size ({entry['size']} bytes); discarded")
                h.update(block)
                out.write(block)
                bar.update(len(block))
        if n != entry["size"]:
            raise ModelFileError(f"download of model {name} from {url} ended after {n} of "
                                 f"{entry['size']} bytes; discarded")
        if h.hexdigest() != entry["sha256"]:
            raise ModelFileError(f"download of model {name} from {url} has the wrong SHA256: "
                                 f"expected {entry['sha256']}, got {h.hexdigest()}; discarded")
        try:
            read_card(tmp)   # the registry pinned a file that is not a model: say so now
        except ModelFileError as exc:
            raise ModelFileError(f"model {name} from {url} is not an xray2xray model file: "
                                 f"{exc.reason}") from None


def fetch(name: str, progress: bool = True) -> Path:
    """The verified local file of registered model ``name``, downloading it if it is not
    cached (or the cached copy does not match the registry)."""
    entry = _entry(name)
    shipped = _package_file(entry["url"])
    if shipped is not None:
        if not shipped.is_file():
            raise ModelFileError(f"model {name} should ship with the package but is missing "
                                 "(reinstall the package)", shipped)
        problem = _verify(shipped, entry)
        if problem:
            raise ModelFileError(f"shipped model {name} does not match the registry: {problem}",
                                 shipped)
        return shipped
    target = _cache_path(entry["name"], entry["version"])
    if target.is_file() and _verify(target, entry) is None:
        return target
    _download(entry, target, progress)
    return target


# ----------------------------------------------------------------------------- local models
def _imported() -> List[Dict[str, Any]]:
    """Model files in the cache that are not a registry entry's download."""
    root = cache_dir()
    if not root.is_dir():
        return []
    registered = {_cache_path(e["name"], e["version"]).name for e in load_registry().values()}
    found = []
    for p in sorted(root.glob(f"*{SUFFIX}")):
        if p.name.startswith(".") or p.name in registered:
            continue
        try:
            card = read_card(p)
        except ModelFileError:
            continue   # a stray file is not a model; do not let it break listing
        found.append({"name": card["name"], "version": card["version"], "source": "imported",
                      "url": None, "sha256": None, "size": p.stat().st_size,
                      "card": {k: card[k] for k in ("description", "license", "intended_use")
                               if k in card},
                      "cached": True, "path": str(p)})
    return found


def import_model(path: PathLike) -> Path:
    """Copy a local model file into the cache (checked in full first); its name and version
    come from its card. Returns the cached path."""
    src = Path(path)
    _, card = load_model_file(src)
    name, version = card["name"], card["version"]
    target = _cache_path(name, version)
    entry = load_registry().get(name)
    digest = sha256_file(src)
    if entry is not None and entry["version"] == version and entry["sha256"] != digest:
        raise InputError(f"the registry's model {name} {version} is a different file; give "
                         "this one another name or version in its card", src)
    if target.is_file() and sha256_file(target) == digest:
        return target
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def remove(name: str) -> List[Path]:
    """Delete every cached file of model ``name`` (all versions); returns what was removed."""
    paths = [Path(m["path"]) for m in _imported() if m["name"] == name]
    entry = load_registry().get(name)
    if entry is not None and _package_file(entry["url"]) is None:
        paths.append(_cache_path(entry["name"], entry["version"]))
    removed = []
    for p in paths:
        if p.is_file():
            p.unlink()
            removed.append(p)
    if not removed:
        if entry is not None and _package_file(entry["url"]) is not None:
            raise InputError(f"model {name} ships with the package; there is nothing to remove")
        raise InputError(f"model {name!r} is not in the cache ({cache_dir()})")
    return removed


def list_models() -> List[Dict[str, Any]]:
    """Registry entries and imported models, each with ``cached`` and ``path`` (or None)."""
    out = []
    for e in sorted(load_registry().values(), key=lambda e: e["name"]):
        package = e["url"].startswith("package://")
        try:
            path = _package_file(e["url"]) if package else _cache_path(e["name"], e["version"])
        except InputError:   # a bad package url is reported when the model is used
            path = None
        cached = path is not None and path.is_file() and path.stat().st_size == e["size"]
        out.append({"name": e["name"], "version": e["version"],
                    "source": "package" if package else "registry",
                    "url": e["url"], "sha256": e["sha256"], "size": e["size"],
                    "card": e["card"], "cached": cached, "path": str(path) if cached else None})
    return out + _imported()


def _version_key(version: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._+-]", version)]


def resolve_model(spec: Optional[PathLike] = None, progress: bool = True) -> Path:
    """A model file to load: None -> the default model; a registered name -> its verified
    (downloaded if needed) file; an imported name -> its newest cached version; an existing
    path -> itself."""
    if spec is None:
        spec = DEFAULT_MODEL
    text = str(spec)
    if isinstance(spec, str) and text in load_registry():
        return fetch(text, progress=progress)
    imported = [m for m in _imported() if m["name"] == text]
    if imported:
        return Path(max(imported, key=lambda m: _version_key(m["version"]))["path"])
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if isinstance(spec, Path) or os.sep in text or "/" in text or text.endswith(SUFFIX):
        raise FileNotFoundInputError("no such model file or folder", path)
    _entry(text)   # raises: unknown name, listing the known ones
    raise AssertionError("unreachable")  # pragma: no cover
