"""The model registry (``XrayWorldModel.weights``): the one-file model format, the registry
and cache, and ``xray2xray models``.

Everything is real: a tiny real WorldModel saved to real files, downloads over ``file://``
and over a local HTTP server on 127.0.0.1 (never the internet). The cache and the registry
are redirected into ``tmp_path`` through ``$XRAY2XRAY_MODELS`` / ``$XRAY2XRAY_REGISTRY``, so
the user's real cache is never touched.
"""
from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from XrayWorldModel.cli import main
from XrayWorldModel.errors import FileNotFoundInputError, InputError, UnreadableFileError
from XrayWorldModel.models import WorldModel, WorldModelConfig
from XrayWorldModel.train import save_checkpoint
from XrayWorldModel.config import TrainConfig, load_config
from XrayWorldModel.weights import (CARD_KEY, DEFAULT_MODEL, ModelFileError, cache_dir,
                                    export_checkpoint, fetch, import_model, list_models,
                                    load_model_file, load_world_model, read_card, remove,
                                    resolve_model, save_model_file)

TINY = WorldModelConfig(image_size=16, patch_size=8, embed_dim=16, depth=1, heads=2,
                        transition_depth=1, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                        decoder_channels=0)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache and registry inside tmp_path; no proxy between us and 127.0.0.1."""
    monkeypatch.setenv("XRAY2XRAY_MODELS", str(tmp_path / "cache"))
    monkeypatch.delenv("XRAY2XRAY_REGISTRY", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def tiny_config() -> dict:
    """A full TrainConfig (the cpu-small preset) with the tiny model section."""
    cfg = load_config("cpu-small").to_dict()
    cfg["model"] = TINY.to_dict()
    cfg["views"]["image_size"] = TINY.image_size
    return TrainConfig.from_dict(cfg).to_dict()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return WorldModel(TINY).eval()


def model_tensors(model):
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def make_model_file(path, model, name="tiny", version="1.0", **card):
    card = {"name": name, "version": version, "config": tiny_config(),
            "description": "a tiny test model", "license": "Apache-2.0", **card}
    return save_model_file(path, model_tensors(model), card)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_registry(path, *entries) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"format": "xray2xray-registry", "models": list(entries)}))
    return path


def entry_for(model_path, url, name="tiny", version="1.0", **over):
    return {"name": name, "version": version, "url": url, "sha256": sha256(model_path),
            "size": Path(model_path).stat().st_size,
            "card": {"description": "a tiny test model", "license": "Apache-2.0",
                     "intended_use": "tests"}, **over}


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www; ``requests`` counts the GETs."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def cache_files(tmp_path):
    root = tmp_path / "cache"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def one_line(exc_info, path=None):
    msg = str(exc_info.value)
    assert "\n" not in msg
    if path is not None:
        assert Path(path).name in msg
    return msg


# ----------------------------------------------------------------------------- model file
def test_save_load_round_trip_keeps_tensors_and_card(tmp_path, tiny_model):
    path = make_model_file(tmp_path / "m.safetensors", tiny_model, metrics={"psnr": 26.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]   # no temp left
    tensors, card = load_model_file(path)
    want = model_tensors(tiny_model)
    assert tensors.keys() == want.keys()
    assert all(torch.equal(tensors[k], want[k]) for k in want)
    assert card["format"] == "xray2xray-model"
    assert {k: card[k] for k in ("name", "version", "description", "metrics")} == {
        "name": "tiny", "version": "1.0", "description": "a tiny test model",
        "metrics": {"psnr": 26.5}}
    assert card["config"] == json.loads(json.dumps(tiny_config()))
    assert read_card(path) == card
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:          # the card really lives in the header
        assert json.loads(f.metadata()[CARD_KEY]) == card

    model, card2 = load_world_model(path)
    assert not model.training and card2 == card
    assert all(torch.equal(v, want[f"model.{k}"]) for k, v in model.state_dict().items())
    # other dtypes (bf16 has no numpy type) survive too
    odd = {"a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "b": torch.tensor(True)}
    save_model_file(tmp_path / "odd.safetensors", odd, {"name": "odd", "version": "0"})
    back, _ = load_model_file(tmp_path / "odd.safetensors")
    assert all(torch.equal(back[k], odd[k]) for k in odd)


def test_damaged_or_foreign_files_are_refused_with_one_line(tmp_path, tiny_model):
    good = make_model_file(tmp_path / "good.safetensors", tiny_model)
    data = good.read_bytes()
    header_len = 8 + int.from_bytes(data[:8], "little")

    cases = {"missing.safetensors": None,
             "truncated.safetensors": data[: len(data) // 2],
             "header-only.safetensors": data[:header_len],
             "text.safetensors": b"this is not a model\n" * 10,
             "empty.safetensors": b""}
    flipped = bytearray(data)
    flipped[len(data) - 3] ^= 0x01                 # a weight byte
    cases["flipped-weight.safetensors"] = bytes(flipped)
    card_at = data.index(b'"description')          # a byte of the card's JSON
    flipped = bytearray(data)
    flipped[card_at + 3] ^= 0x01
    cases["flipped-card.safetensors"] = bytes(flipped)
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ModelFileError) as exc:
            load_model_file(path)
        one_line(exc, path)
        assert isinstance(exc.value, UnreadableFileError)

    # a plain safetensors file (a training checkpoint's weights): no card
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="without an xray2xray model card") as exc:
        read_card(tmp_path / "plain.safetensors")
    one_line(exc, "plain.safetensors")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, tiny_model):
    tensors = model_tensors(tiny_model)
    tensors.pop(sorted(tensors)[0])
    path = save_model_file(tmp_path / "short.safetensors", tensors,
                           {"name": "short", "version": "1", "config": tiny_config()})
    load_model_file(path)                          # a valid file ...
    with pytest.raises(ModelFileError, match="do not fit") as exc:
        load_world_model(path)                     # ... of weights that do not build a model
    one_line(exc, path)
    with pytest.raises(ModelFileError, match="name"):
        save_model_file(tmp_path / "x.safetensors", tensors, {"name": "../evil", "version": "1"})


def test_export_checkpoint_keeps_only_model_weights(tmp_path, tiny_model):
    run = tmp_path / "run"
    tensors = model_tensors(tiny_model)
    tensors.update({f"ema.{k}": v.clone() for k, v in tiny_model.encoder.state_dict().items()})
    save_checkpoint(run / "checkpoints", 7, tensors,
                    {"config": tiny_config(), "metrics": {"val_psnr": 20.0},
                     "package_version": "0.1.0", "model": "xray2xray-world-model",
                     "training_data": "phantom:4"})
    out = export_checkpoint(run, tmp_path / "exported.safetensors",
                            {"name": "exported", "description": "from a run"})
    got, card = load_model_file(out)
    # the model's weights (no EMA encoder), and the mean training views of the baseline
    assert sorted(got) == sorted([k for k in tensors if k.startswith("model.")]
                                 + ["baseline.mean_views"])
    assert card["mean_views"]["n_cases"] >= 1
    assert card["name"] == "exported" and card["version"] == "step7"
    assert card["metrics"] == {"val_psnr": 20.0} and card["training_data"] == "phantom:4"
    assert card["description"] == "from a run" and card["package_version"] == "0.1.0"
    assert len(card["created"]) == 10 and card["config"]["model"]["embed_dim"] == 16
    # the model file, the checkpoint file and the run folder all load the same model
    ref = load_world_model(out)[0].state_dict()
    for spec in (out, run, run / "checkpoints" / "step-0000007.safetensors"):
        model, c = load_world_model(spec)
        assert not model.training
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- registry
def test_fetch_over_file_url_caches_a_verified_copy(tmp_path, monkeypatch, tiny_model):
    src = make_model_file(tmp_path / "dist" / "tiny.safetensors", tiny_model)
    reg = write_registry(tmp_path / "reg.json", entry_for(src, src.as_uri()),
                         entry_for(src, "dist/tiny.safetensors", name="relative"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))
    path = fetch("tiny", progress=False)
    assert path == cache_dir() / "tiny-1.0.safetensors" == tmp_path / "cache" / path.name
    assert sha256(path) == sha256(src)
    assert fetch("relative", progress=False).name == "relative-1.0.safetensors"  # url beside reg
    assert cache_files(tmp_path) == ["relative-1.0.safetensors", "tiny-1.0.safetensors"]
    assert resolve_model("tiny") == path

    text = tmp_path / "dist" / "notes.txt"         # right hash, but not a model: refused
    text.write_text("not a model")
    write_registry(reg, entry_for(text, text.as_uri(), name="notes"))
    with pytest.raises(ModelFileError, match="notes from .* is not an xray2xray model file"):
        fetch("notes", progress=False)
    assert not (tmp_path / "cache" / "notes-1.0.safetensors").exists()


def test_fetch_over_http_verifies_and_downloads_once(tmp_path, monkeypatch, server, tiny_model):
    root, base, requests = server
    src = make_model_file(root / "tiny.safetensors", tiny_model)
    reg = write_registry(tmp_path / "reg.json",
                         entry_for(src, f"{base}/tiny.safetensors"),
                         entry_for(src, f"{base}/tiny.safetensors", name="bad-hash",
                                   sha256="ab" * 32),
                         entry_for(src, f"{base}/tiny.safetensors", name="bad-size", size=10),
                         entry_for(src, f"{base}/gone.safetensors", name="gone"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))

    path = fetch("tiny", progress=False)
    assert requests == ["/tiny.safetensors"] and sha256(path) == sha256(src)
    assert fetch("tiny", progress=False) == path and resolve_model("tiny") == path
    assert len(requests) == 1                      # cached and verified: no second download

    with pytest.raises(ModelFileError) as exc:
        fetch("bad-hash", progress=False)
    msg = one_line(exc)
    assert f"expected {'ab' * 32}, got {sha256(src)}" in msg and "bad-hash" in msg
    with pytest.raises(ModelFileError, match="larger than"):
        fetch("bad-size", progress=False)
    with pytest.raises(InputError, match="cannot download model gone .*404") as exc:
        fetch("gone", progress=False)
    one_line(exc)
    assert cache_files(tmp_path) == ["tiny-1.0.safetensors"]   # nothing bad or temporary left

    # a cached copy that went bad is replaced by a fresh download
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    assert sha256(fetch("tiny", progress=False)) == sha256(src) and len(requests) == 5


def test_unreachable_server_is_one_line_input_error(tmp_path, monkeypatch, tiny_model):
    import socket
    src = make_model_file(tmp_path / "tiny.safetensors", tiny_model)
    with socket.socket() as s:                     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = write_registry(tmp_path / "reg.json",
                         entry_for(src, f"http://127.0.0.1:{port}/tiny.safetensors"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))
    with pytest.raises(InputError, match="cannot download model tiny") as exc:
        fetch("tiny", progress=False)
    one_line(exc)
    assert cache_files(tmp_path) == []


def test_import_list_remove(tmp_path, monkeypatch, tiny_model):
    src = make_model_file(tmp_path / "mine.safetensors", tiny_model, name="mine", version="2",
                          intended_use="tests")
    reg = write_registry(tmp_path / "reg.json", entry_for(src, src.as_uri(), name="remote"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))
    listed = [(m["name"], m["cached"], m["path"]) for m in list_models() if m["source"] != "package"]
    assert listed == [("remote", False, None)]
    shipped = [m for m in list_models() if m["source"] == "package"]
    assert all(m["cached"] and Path(m["path"]).is_file() for m in shipped)   # no download needed

    path = import_model(src)
    assert path == tmp_path / "cache" / "mine-2.safetensors" and sha256(path) == sha256(src)
    assert import_model(src) == path               # again: a no-op
    models = {m["name"]: m for m in list_models()}
    assert models["mine"]["source"] == "imported" and models["mine"]["cached"]
    assert models["mine"]["path"] == str(path) and models["mine"]["version"] == "2"
    assert models["mine"]["card"] == {"description": "a tiny test model",
                                      "license": "Apache-2.0", "intended_use": "tests"}
    assert resolve_model("mine") == path

    (tmp_path / "cache" / "junk.safetensors").write_bytes(b"junk")   # not listed, not fatal
    assert sorted(models) == sorted(m["name"] for m in list_models())

    with pytest.raises(ModelFileError):
        import_model(tmp_path / "cache" / "junk.safetensors")
    assert remove("mine") == [path] and not path.exists()
    with pytest.raises(InputError, match="not in the cache"):
        remove("mine")
    fetch("remote", progress=False)
    assert remove("remote") == [tmp_path / "cache" / "remote-1.0.safetensors"]


def test_resolve_model_paths_names_package_files_and_unknowns(tmp_path, monkeypatch, tiny_model):
    file = make_model_file(tmp_path / "m.safetensors", tiny_model)
    assert resolve_model(file) == file and resolve_model(str(file)) == file
    with pytest.raises(FileNotFoundInputError):
        resolve_model(tmp_path / "nope.safetensors")

    # a model shipped inside an (importable) package resolves in place, without a download
    pkg = tmp_path / "site" / "x2x_testpkg"
    (pkg / "builtin").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shipped = make_model_file(pkg / "builtin" / "demo.safetensors", tiny_model,
                              name=DEFAULT_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reg = write_registry(
        tmp_path / "reg.json",
        entry_for(shipped, "package://x2x_testpkg/builtin/demo.safetensors", name=DEFAULT_MODEL),
        entry_for(shipped, "package://x2x_testpkg/../m.safetensors", name="escape"),
        entry_for(file, "package://x2x_testpkg/builtin/demo.safetensors", name="tampered"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))
    assert resolve_model() == shipped == resolve_model(DEFAULT_MODEL)
    assert load_world_model()[1]["name"] == DEFAULT_MODEL
    assert cache_files(tmp_path) == []
    listed = {m["name"]: m for m in list_models()}
    assert listed[DEFAULT_MODEL]["source"] == "package" and listed[DEFAULT_MODEL]["cached"]
    with pytest.raises(InputError, match="outside its package"):
        resolve_model("escape")
    with pytest.raises(ModelFileError, match="does not match the registry"):
        resolve_model("tampered")
    with pytest.raises(InputError, match="ships with the package"):
        remove(DEFAULT_MODEL)

    with pytest.raises(InputError) as exc:
        resolve_model("no-such-model")
    msg = one_line(exc)
    assert "unknown model 'no-such-model'" in msg and f"escape, tampered, {DEFAULT_MODEL}" in msg


def test_shipped_demo_model_resolves_offline_and_bad_registry_files(tmp_path, monkeypatch):
    """The default model ships inside the package: it resolves with no download, matches its
    registry entry's size and SHA256, and its card says it is a demonstration."""
    from XrayWorldModel.weights.registry import load_registry
    entry = load_registry()[DEFAULT_MODEL]
    assert entry["url"].startswith("package://")
    path = resolve_model()
    assert path.stat().st_size == entry["size"] <= 20 * 2 ** 20 and sha256(path) == entry["sha256"]
    card = read_card(path)
    assert "not for clinical use" in card["intended_use"].lower()
    assert "synthetic" in card["disclaimer"] and "not for clinical use" in card["disclaimer"]
    assert set(card["heads"]) == {"pathology", "risk"} and "domain" in card
    # issue 13: calibrated heads and an OOD reference with its measured threshold
    from XrayWorldModel.probe.ood import check_reference
    ood = check_reference(card.get("ood"))
    assert ood is not None and ood["threshold"] > 0 and ood["heldout"]["n"] >= 200
    assert ood["features"]["imagined"] == card["heads"]["pathology"]["features"]["imagined"]
    for task in ("pathology", "risk"):
        logistic = [h for h in card["heads"][task]["heads"] if h["kind"] == "logistic"]
        # recalibrated on its 600 held-out CTs: isotonic maps (probe/calibration.py)
        assert logistic and all(h["calibration"]["method"] == "isotonic" and
                                len(h["calibration"]["x"]) == len(h["labels"]) for h in logistic)
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundInputError, match="absent.json"):
        list_models()
    bad = tmp_path / "bad.json"
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(bad))
    for content, match in [("{", "not valid JSON"), ("[]", "format"),
                           ('{"format": "xray2xray-registry", "models": [{"name": "a"}]}', "lacks"),
                           (json.dumps({"format": "xray2xray-registry", "models": [
                               {"name": "a", "version": "1", "url": "x", "sha256": "00",
                                "size": 1}]}), "sha256")]:
        bad.write_text(content)
        with pytest.raises(InputError, match=match) as exc:
            list_models()
        one_line(exc, bad)


# ----------------------------------------------------------------------------- CLI
def test_cli_models_commands(tmp_path, monkeypatch, capsys, tiny_model):
    src = make_model_file(tmp_path / "mine.safetensors", tiny_model, name="mine")
    reg = write_registry(tmp_path / "reg.json", entry_for(src, src.as_uri(), name="remote"))
    monkeypatch.setenv("XRAY2XRAY_REGISTRY", str(reg))

    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["cached"]) for m in listed if m["source"] != "package"] == [("remote", False)]

    assert main(["models", "fetch", "remote"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "remote-1.0.safetensors")
    assert main(["models", "import", str(src)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "mine-1.0.safetensors")
    assert main(["models", "path", "mine"]) == 0
    assert capsys.readouterr().out.strip().endswith("mine-1.0.safetensors")
    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["NAME", "VERSION", "SIZE", "CACHED", "SOURCE"]
    names = [r.split()[0] for r in table[1:-1]]
    assert names.index("remote") < names.index("mine") and DEFAULT_MODEL in names
    assert table[-1] == f"cache: {tmp_path / 'cache'}"
    assert main(["models", "remove", "mine"]) == 0
    assert "removed" in capsys.readouterr().out

    for argv, needle in [(["models", "fetch", "nope"], "unknown model 'nope'"),
                         (["models", "import", str(tmp_path / "reg.json")], "reg.json"),
                         (["models"], "an action is required"),
                         (["models", "frobnicate"], "invalid choice")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
        if argv[1:2] != ["frobnicate"]:
            assert err.strip().count("\n") == 0 and err.startswith("xray2xray: error:")


# ----------------------------------------------------------------------------- release tool
TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_build_demo_tool_runs_as_a_script_outside_the_package():
    """``python tools/build_demo.py`` is how README builds the demo model; it is not part of
    the installed package (the architecture test checks the package never imports it)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(TOOLS / "build_demo.py"), "--help"],
                          capture_output=True, text=True, cwd=TOOLS.parent.parent)
    assert done.returncode == 0, done.stderr
    assert "--from-model" in done.stdout and "--cohort" in done.stdout
    assert "--refit" in done.stdout and "--heldout" in done.stdout
    assert not (Path(__file__).resolve().parents[1] / "XrayWorldModel" / "weights"
                / "build_demo.py").exists()


def test_build_demo_tool_adds_the_prior_and_installs(tmp_path, monkeypatch, tiny_model):
    """``--from-model``: a new version of a model file with the volume prior of its own
    training CTs, copied into builtin/ and recorded in the registry (both redirected here)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_demo", TOOLS / "build_demo.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = json.loads(tool.REGISTRY.read_text())
    monkeypatch.setattr(tool, "BUILTIN", tmp_path / "builtin")
    monkeypatch.setattr(tool, "REGISTRY", tmp_path / "registry.json")
    (tmp_path / "registry.json").write_text(json.dumps(shipped))

    cfg = tiny_config()
    cfg["data"].update(source="phantom:2", cache_dir=str(tmp_path / "ct-cache"), grid_size=24,
                       grid_spacing=14.0)
    src = save_model_file(tmp_path / "old.safetensors", model_tensors(tiny_model),
                          {"name": tool.NAME, "version": "1.0", "config": cfg,
                           "description": "tiny", "license": "Apache-2.0",
                           "intended_use": "tests only"})
    assert tool.main(["--from-model", str(src), "--version", "9.9",
                      "--work", str(tmp_path / "work")]) == 0
    installed = tmp_path / "builtin" / f"{tool.NAME}-9.9.safetensors"
    tensors, card = load_model_file(installed)
    assert card["version"] == "9.9" and card["volume_prior"]["n_volumes"] == 2
    assert "prior.hu" in tensors
    entry = [m for m in json.loads((tmp_path / "registry.json").read_text())["models"]
             if m["name"] == tool.NAME]
    assert len(entry) == 1 and entry[0]["sha256"] == sha256(installed)
    assert entry[0]["url"] == f"package://XrayWorldModel/weights/builtin/{installed.name}"


def test_old_model_file_without_trust_fields_still_loads_and_says_so(tmp_path):
    """A model file from before issue 13 (no OOD reference, uncalibrated heads): it loads and
    runs; the verdict says no OOD reference exists and rests on the consistency score."""
    import numpy as np
    from XrayWorldModel.infer import run_inference
    from XrayWorldModel.infer.demo import demo_phantom
    from XrayWorldModel.infer.outputs import results_dict
    from XrayWorldModel.infer.trust import NO_REFERENCE
    tensors, card = load_model_file(resolve_model())
    old = {k: v for k, v in card.items() if k not in ("ood", "disclaimer")}
    old["heads"] = {task: dict(entry, heads=[{k: v for k, v in h.items() if k != "calibration"}
                                             for h in entry["heads"]])
                    for task, entry in card["heads"].items()}
    old_path = save_model_file(tmp_path / "old.safetensors", tensors, dict(old, version="old"))
    from XrayWorldModel.config import TrainConfig
    rad = demo_phantom(TrainConfig.from_dict(card["config"]).views)[0]
    new = results_dict(run_inference(rad, None, views=(), volume_size=24, uncertainty=0))
    res = results_dict(run_inference(rad, str(old_path), views=(), volume_size=24, uncertainty=0))
    t = res["trust"]
    assert t["reference"] is False and t["ood_score"] is None and NO_REFERENCE in t["reasons"]
    assert t["in_distribution"] == (t["consistency"] >= t["min_consistency"])
    assert new["trust"]["reference"] is True and new["scores"]["calibrated"] is True
    assert res["scores"]["calibrated"] is False
    # the same heads without their Platt maps give other (uncalibrated) probabilities
    if t["in_distribution"] and new["trust"]["in_distribution"]:
        p_old = np.array(list(res["scores"]["pathologies"].values()))
        p_new = np.array(list(new["scores"]["pathologies"].values()))
        assert not np.allclose(p_old, p_new, atol=1e-3)
