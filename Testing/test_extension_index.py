"""The draft Extensions Index entry (docs/extensions-index/Xray2Xray.json) against the index's
published rules, checked offline.

Rules followed, and their versions:

* the catalog entry schema **v1.0.1** (``slicer-extension-catalog-entry-schema-v1.0.1.json``,
  the ``$schema`` every entry of the index names; the index's lint hook validates against
  v1.0.2, which only adds ``dicom_support_rule``), transcribed below as ``SCHEMA_V1_0_1``;
* the checks of the index's ``scripts/check_description_files.py`` at ExtensionsIndex commit
  07f1d1b (2026-08-07), re-implemented here for what can be decided without the network:
  JSON with LF line endings, extension name without the "Slicer" prefix, accepted category,
  repository name with a "Slicer" prefix, ``scm_url`` scheme, top-level ``project()`` equal
  to the extension name, icon and screenshot URLs present (and here: files of this
  repository that are images), a licence file, repository size under 100 MB, and every
  build dependency an existing index entry;
* the pull-request checklist (.github/PULL_REQUEST_TEMPLATE.md): the entry agrees with the
  top-level CMakeLists.txt (``build_dependencies`` = ``EXTENSION_DEPENDS``), and the index's
  prettier style (two-space JSON, one array item per line, final newline).

Not checkable offline, left to the submission: that the GitHub repository exists under the
new name, carries the ``3d-slicer-extension`` topic, and that the URLs answer.
"""
import json
import re
import subprocess
import urllib.parse as urlparse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "docs" / "extensions-index" / "Xray2Xray.json"
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json#")

#: Catalog entry schema v1.0.1: required keys, no others, and their types.
SCHEMA_V1_0_1 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}

#: ``ACCEPTED_EXTENSION_CATEGORIES`` of check_description_files.py (commit 07f1d1b).
ACCEPTED_CATEGORIES = frozenset({
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform",
    "Conda", "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples",
    "Exporter", "FTV Segmentation", "Filtering", "Filtering.Morphology", "Filtering.Vesselness",
    "Holographic Display", "Image Synthesis", "IGT", "Informatics", "Netstim", "Neuroimaging",
    "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences",
    "Shape Analysis", "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF",
    "SlicerMorph", "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound",
    "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
})
#: Prefixes the repository name may start with (``check_git_repository_name``).
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
#: Index entries our build dependencies name (PyTorch.json, category Utilities, tier 5).
KNOWN_INDEX_ENTRIES = frozenset({"PyTorch"})
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING",
                 "COPYING.txt")
RAW_PREFIX = "https://raw.githubusercontent.com/xray2xray/SlicerXray2Xray/main/"
SIZE_LIMIT_MB = 100


def _entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def _cmake() -> str:
    return (REPO / "CMakeLists.txt").read_text()


def _cmake_field(name: str) -> str:
    m = re.search(r'set\s*\(EXTENSION_%s\s*"([^"]+)"\s*\)' % name, _cmake(), re.IGNORECASE)
    assert m, f"no EXTENSION_{name} in CMakeLists.txt"
    return m.group(1).strip()


def _extension_name() -> str:
    return ENTRY.stem


# ----------------------------------------------------------------------------- the checker
def check_entry(name: str, entry: dict, raw: bytes) -> list:
    """Problems the index's checks would report for an entry (empty: accepted)."""
    jsonschema = pytest.importorskip("jsonschema")
    problems = []
    validator = jsonschema.Draft7Validator(SCHEMA_V1_0_1)
    problems += [f"schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '(top)'}"
                 for e in validator.iter_errors(entry)]
    if b"\r" in raw:
        problems.append("non-LF line endings")
    if isinstance(entry, dict):
        if entry.get("$schema") != SCHEMA_URL:
            problems.append(f"$schema is not the v1.0.1 schema URL: {entry.get('$schema')!r}")
        if name.lower().startswith("slicer"):
            problems.append("extension name should not start with 'Slicer'")
        if entry.get("category") not in ACCEPTED_CATEGORIES:
            problems.append(f"category {entry.get('category')!r} is unknown to the index")
        url = str(entry.get("scm_url", ""))
        if "://" not in url or urlparse.urlsplit(url).scheme not in ("git", "https"):
            problems.append(f"scm_url {url!r} is not a git:// or https:// URL")
        repo = Path(urlparse.urlsplit(url.strip().strip("/")).path).name
        repo = repo[:-4] if repo.endswith(".git") else repo
        if not repo.startswith(REPOSITORY_PREFIXES):
            problems.append(f"repository name {repo!r} should start with 'Slicer'")
        unknown = set(entry.get("build_dependencies") or []) - KNOWN_INDEX_ENTRIES
        if unknown:
            problems.append(f"build dependencies not in the index: {sorted(unknown)}")
    return problems


def test_the_checker_rejects_what_the_index_rejects():
    """The rules above are only worth something if they fail where the index fails: the
    entry as it would have been written before (category "Imaging", repository
    github.com/xray2xray/Xray2Xray), and schema violations."""
    old = dict(_entry(), category="Imaging", scm_url="https://github.com/xray2xray/Xray2Xray.git")
    problems = check_entry("Xray2Xray", old, b"{}\n")
    assert any("category 'Imaging'" in p for p in problems)
    assert any("repository name 'Xray2Xray'" in p for p in problems)
    bad = {"$schema": SCHEMA_URL, "category": "Image Synthesis", "tier": 7, "homepage": "x",
           "scm_url": "ftp://example.org/SlicerX"}
    problems = check_entry("SlicerX", bad, b"{}\r\n")
    for expected in ("schema: 7 is greater than the maximum of 5",
                     "Additional properties are not allowed ('homepage' was unexpected)",
                     "non-LF", "should not start with 'Slicer'", "not a git:// or https://"):
        assert any(expected in p for p in problems), (expected, problems)
    assert any("'scm_url' is a required property" in p
               for p in check_entry("X", {"$schema": SCHEMA_URL, "category": "Analysis"}, b""))


# ----------------------------------------------------------------------------- the entry
def test_entry_passes_the_index_checks():
    assert check_entry(_extension_name(), _entry(), ENTRY.read_bytes()) == []


def test_entry_is_in_the_index_style():
    """Two-space JSON as prettier writes it (one array item per line), final newline."""
    entry = _entry()
    assert ENTRY.read_text(encoding="utf-8") == json.dumps(entry, indent=2) + "\n"
    assert list(entry) == sorted(entry), "keys in the index's (alphabetical) order"
    assert entry["category"] == "Image Synthesis"
    assert entry["tier"] == 1 and entry["scm_revision"] == "main"


def test_entry_matches_the_top_level_cmake():
    """The checklist: the entry and CMakeLists.txt agree (dependencies, name, URLs)."""
    entry = _entry()
    depends = _cmake_field("DEPENDS").split()
    assert entry["build_dependencies"] == ([] if depends == ["NA"] else depends)
    m = re.search(r"project\s*\(\s*([^\s\)]+)", _cmake(), re.IGNORECASE)
    assert m and m.group(1) == _extension_name(), "project() must be the extension name"
    repo_url = entry["scm_url"][:-len(".git")]
    for field in ("HOMEPAGE",):
        assert _cmake_field(field).startswith(repo_url), field
    for field in ("ICONURL", "SCREENSHOTURLS"):
        for url in _cmake_field(field).split():
            assert url.startswith(RAW_PREFIX), f"EXTENSION_{field} {url} is not in {repo_url}"


@pytest.mark.parametrize("field", ["ICONURL", "SCREENSHOTURLS"])
def test_icon_and_screenshot_urls_are_images_of_this_repository(field):
    from PIL import Image
    urls = _cmake_field(field).split()
    assert urls
    for url in urls:
        assert url.startswith("http") and url.lower().endswith((".png", ".jpg", ".jpeg", ".gif"))
        path = REPO / url[len(RAW_PREFIX):]
        assert path.is_file(), f"{url}: {path.relative_to(REPO)} is not in the repository"
        with Image.open(path) as image:
            assert image.format in ("PNG", "JPEG", "GIF")
            if field == "ICONURL":
                assert image.size == (128, 128)


def test_license_file_and_repository_size():
    assert any((REPO / name).is_file() for name in LICENSE_NAMES)
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                                timeout=60, check=True).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the size check counts tracked files")
    size = sum((REPO / f.decode()).stat().st_size for f in listed if f and (REPO / f.decode()).is_file())
    assert size / 2**20 < SIZE_LIMIT_MB, f"{size / 2**20:.1f} MB"
