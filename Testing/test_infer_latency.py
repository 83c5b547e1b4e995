"""What keeps a fresh ``xray2xray infer`` fast, pinned so that it cannot quietly come back:
the volume prior's projections are rendered once and then read from the user cache (equal to
rendering them), small volumes find their attenuating box without numba, and a fresh process
with a warm cache never imports numba (about 0.3 s of start-up)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from XrayWorldModel.config import load_config
from XrayWorldModel.drr.render import project
from XrayWorldModel.drr.support import NUMPY_MAX_VOXELS, support_box
from XrayWorldModel.infer import prior as prior_module
from XrayWorldModel.infer.pipeline import isocentric_geometry
from XrayWorldModel.infer.prior import PROJECTIONS_FOLDER, fov_grid, prior_projections


def _box_by_brute_force(attenuates: np.ndarray):
    """The oracle: the extremes of the indices of every voxel that attenuates."""
    hit = np.argwhere(attenuates)
    if hit.size == 0:
        return None
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(hit.min(0), hit.max(0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_support_box_on_both_paths_matches_brute_force(dtype):
    """numpy (small volumes) and the numba kernel (large ones) give the box of the voxels
    whose attenuation is non-zero, in each input dtype, empty volumes included."""
    from XrayWorldModel.drr.joseph import support_extent
    rng = np.random.default_rng(3)
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        fill = 0 if dtype == np.uint8 else -2000     # clearly below air: no rounding call
        hu = np.full(shape, fill, dtype)
        for _ in range(int(rng.integers(0, 4))):
            hu[tuple(int(rng.integers(0, n)) for n in shape)] = 7 if dtype == np.uint8 else 40
        for scale, offset, clip in ((0.02 / 1000, 0.02, True), (1.0, 0.0, False)):
            mu = hu.astype(np.float64) * scale + offset
            want = _box_by_brute_force(mu > 0 if clip else mu != 0)
            assert hu.size <= NUMPY_MAX_VOXELS
            assert support_box(hu, scale, offset, clip) == want
            ext = support_extent(hu, np.float32(scale), np.float32(offset), clip)
            numba_box = None if ext[1, 0] < 0 else tuple(
                slice(int(ext[0, k]), int(ext[1, k]) + 1) for k in range(3))
            assert numba_box == want


def test_prior_projections_are_rendered_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first call renders (equal to :func:`project` called directly) and writes the
    cache; a new process (memo cleared) reads the file without rendering; a damaged file is
    rendered again; another geometry is another entry."""
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(tmp_path))
    monkeypatch.setattr(prior_module, "_PROJECTIONS", type(prior_module._PROJECTIONS)())
    sampling = load_config("cpu-small").views
    geometry = isocentric_geometry(sampling, [0.0, 45.0, 90.0])
    grid = fov_grid(geometry, 16)
    mu0 = np.random.default_rng(0).uniform(0, 0.03, (16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        direct = project(torch.from_numpy(mu0), grid.affine, geometry).numpy()

    own = prior_projections(mu0, grid, geometry)
    np.testing.assert_array_equal(own, direct)
    files = list((tmp_path / PROJECTIONS_FOLDER).glob("*.npy"))
    assert len(files) == 1

    prior_module._PROJECTIONS.clear()                 # as a new process would start

    def no_rendering(*args, **kwargs):
        raise AssertionError("the cached projections should have been read, not rendered")
    monkeypatch.setattr(prior_module, "project", no_rendering)
    np.testing.assert_array_equal(prior_projections(mu0, grid, geometry), direct)

    files[0].write_bytes(b"not an npy file")
    prior_module._PROJECTIONS.clear()
    monkeypatch.setattr(prior_module, "project", project)
    np.testing.assert_array_equal(prior_projections(mu0, grid, geometry), direct)
    assert np.load(files[0]).shape == direct.shape     # rewritten whole

    other = isocentric_geometry(sampling, [0.0, 30.0])
    assert prior_projections(mu0, grid, other).shape[0] == 2
    assert len(list((tmp_path / PROJECTIONS_FOLDER).glob("*.npy"))) == 2


def _smooth_png(path, size: int = 128):
    """A smooth, radiograph-like 8-bit image (noise would be refused before the model)."""
    from PIL import Image
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    img = np.exp(-(x ** 2 + y ** 2) / 0.08) + 0.3 * np.cos(6 * x) ** 2
    Image.fromarray((img / img.max() * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.slow      # a fresh process: Python, torch and the package start (~4 s)
def test_fresh_infer_with_a_warm_cache_imports_no_numba(tmp_path, monkeypatch):
    """A fresh ``xray2xray infer`` after a first run: numba stays unimported, idle OpenMP
    threads sleep instead of spinning, and the volume equals the one rendered with the
    projector in this process."""
    from XrayWorldModel.infer import run_inference
    from XrayWorldModel.io import read_cxr, read_ct
    monkeypatch.setenv("XRAY2XRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prior_module, "_PROJECTIONS", type(prior_module._PROJECTIONS)())
    png = _smooth_png(tmp_path / "cxr.png")
    with pytest.warns(UserWarning):                   # a PNG has no pixel spacing
        rad = read_cxr(png)
    here = run_inference(rad, None, volume_size=32, uncertainty=0)   # fills the cache
    code = ("import json, sys\nfrom XrayWorldModel.cli import main\n"
            f"rc = main(['infer', {str(png)!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--volume-size', '32', '--uncertainty', '0'])\n"
            "import os\nprint(json.dumps({'rc': rc, 'numba': 'numba' in sys.modules, "
            "'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY')}))")
    env = dict(os.environ, XRAY2XRAY_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    env.pop("OMP_WAIT_POLICY", None)                  # the command chooses when the user did not
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "numba": False, "omp_wait_policy": "PASSIVE"}
    there = read_ct(tmp_path / "out" / "volume.nii.gz").array   # stored in whole HU
    assert np.abs(there - here.volume.array).max() <= 0.5 + 1e-2


@pytest.mark.parametrize("case", ["cone", "anisotropic", "parallel", "wide detector"])
def test_torch_column_renderer_matches_the_numba_kernel(case):
    """The PyTorch column-sheet form gives numba's Joseph sums (to float rounding) on axial
    volumes, at angles where the columns' dominant axis changes within one view; a tilted
    (cone) geometry is not its case and falls back to the general form, equally right."""
    from XrayWorldModel.drr import DRRRenderer
    from XrayWorldModel.drr.joseph_torch import joseph_project_columns_torch
    from XrayWorldModel.drr.raytable import RayTable
    from XrayWorldModel.geometry import ProjectionGeometry
    from XrayWorldModel.volume import Volume
    rng = np.random.default_rng(5)
    spacing = (1.5, 1.5, 2.5) if case == "anisotropic" else (2.0, 2.0, 2.0)
    hu = rng.uniform(-1000, 1500, (40, 36, 30)).astype(np.float32)
    hu[:4] = -1000                                            # an air margin to crop
    vol = Volume.from_spacing(hu, spacing)
    shape, pix = ((48, 64), 1.2) if case != "wide detector" else ((40, 120), 2.0)
    angles = (0.0, 30.0, 45.0, 100.0, 225.0, 300.0)
    beam = {"beam": "parallel"} if case == "parallel" else {}
    geometry = ProjectionGeometry(angles=angles, detector_shape=shape, pixel_spacing=(pix, pix),
                                  sdd=900.0, sod=600.0, **beam).resolve(vol)
    want = DRRRenderer(vol, "fast", "cpu").render(geometry)           # numba
    got = DRRRenderer(vol, "fast", "cpu", engine="torch").render(geometry)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    mu = torch.from_numpy(np.clip((hu / 1000 + 1) * 0.02, 0, None).astype(np.float32))
    tilted = ProjectionGeometry(angles=angles, detector_shape=shape, pixel_spacing=(pix, pix),
                                sdd=900.0, sod=600.0, tilt=10.0).resolve(vol)
    assert joseph_project_columns_torch(mu, RayTable(vol.affine, tilted)) is None
    want = DRRRenderer(vol, "fast", "cpu").render(tilted)
    got = DRRRenderer(vol, "fast", "cpu", engine="torch").render(tilted)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()


@pytest.mark.parametrize("block", [1, 2, 3, (4, 2), (1, 5), 8])
def test_block_mean_equals_skimage_block_reduce_on_whole_blocks(block):
    """The fast block means every radiograph reduction starts with (screen, scale estimate,
    domain mapping) give skimage's ``block_reduce`` result on the whole blocks, for an image
    whose sides are not multiples of the block, and leave the leftover edge out."""
    from skimage.measure import block_reduce

    from XrayWorldModel.blocks import block_mean
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 30.0, (101, 67)).astype(np.float32)
    fr, fc = (block, block) if isinstance(block, int) else block
    whole = image[: 101 // fr * fr, : 67 // fc * fc].astype(np.float64)
    expected = block_reduce(whole, (fr, fc), np.mean)
    got = block_mean(image, block)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    # the leftover edge is dropped, not averaged in: a huge value there changes nothing
    image[-1, :] = 1e9
    image[:, -1] = 1e9
    if 101 % fr and 67 % fc:
        np.testing.assert_allclose(block_mean(image, block), expected, rtol=1e-12, atol=1e-9)


def test_block_mean_refuses_what_has_no_whole_block():
    from XrayWorldModel.blocks import block_mean
    with pytest.raises(ValueError):
        block_mean(np.ones((3, 40)), 4)
    with pytest.raises(ValueError):
        block_mean(np.ones((8, 8)), 0)
