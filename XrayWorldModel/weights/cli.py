"""``xray2xray models ...``: list, fetch, import, remove and locate model files.

Kept apart from the main CLI module so the registry's commands live beside the registry;
the main CLI only registers them, and turns package errors into one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError
from . import registry

_COMMANDS = "list, fetch, import, remove or path"


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand (with its own subcommands) to ``subparsers``."""
    m = subparsers.add_parser(
        "models", help="list, fetch, import or remove trained models",
        description="Trained models: the registry (shipped, plus $XRAY2XRAY_REGISTRY) and the "
        "local cache ($XRAY2XRAY_MODELS, else the user cache dir). Downloads are checked "
        "against the registry's size and SHA256.")
    sub = m.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("list", help="known models and whether they are cached")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    f = sub.add_parser("fetch", help="download a registered model into the cache (verified)")
    f.add_argument("name", metavar="NAME")
    i = sub.add_parser("import", help="copy a local model file into the cache")
    i.add_argument("file", metavar="FILE", help="a .safetensors model file (with its card)")
    r = sub.add_parser("remove", help="delete a model's cached files")
    r.add_argument("name", metavar="NAME")
    p = sub.add_parser("path", help="print the local path of a model (fetching it if needed)")
    p.add_argument("name", metavar="NAME", nargs="?", default=None,
                   help="model name or file (default: the default model)")
    m.set_defaults(func=run_models)
    return m


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _table(models) -> str:
    rows = [("NAME", "VERSION", "SIZE", "CACHED", "SOURCE", "DESCRIPTION")]
    rows += [(m["name"], m["version"], _size(m["size"]), "yes" if m["cached"] else "no",
              m["source"], str(m["card"].get("description", ""))) for m in models]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]).rstrip()
                     for r in rows)


def run_models(args) -> int:
    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    cmd = args.models_command
    if cmd is None:
        raise InputError(f"models: an action is required ({_COMMANDS})")
    if cmd == "list":
        models = registry.list_models()
        if args.json:
            print(json.dumps(models, indent=1))
        else:
            print(_table(models) if models else "no models known")
            print(f"cache: {registry.cache_dir()}")
    elif cmd == "fetch":
        print(registry.fetch(args.name, progress=progress))
    elif cmd == "import":
        print(registry.import_model(args.file))
    elif cmd == "remove":
        for p in registry.remove(args.name):
            print(f"removed {p}")
    elif cmd == "path":
        print(registry.resolve_model(args.name, progress=progress))
    return 0
