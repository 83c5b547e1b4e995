"""DRR engine: exactness against closed-form line integrals, the orientation convention on
the real CT, fast-vs-exact accuracy, differentiability and geometry edge cases."""
import csv
import warnings

import numpy as np
import pytest
import torch

from XrayWorldModel.drr import DRRRenderer, hu_to_mu, project, render_drr
from XrayWorldModel.drr.joseph_torch import joseph_project_torch
from XrayWorldModel.drr.rays import RayTable
from XrayWorldModel.errors import InputError
from XrayWorldModel.geometry import DetectorCutsVolumeWarning, ProjectionGeometry
from XrayWorldModel.phantom import Ellipsoid, EllipsoidPhantom, default_ellipsoid_phantom
from XrayWorldModel.volume import Volume


def _errors(ph, vol, method, angles=tuple(np.arange(8) * 45.0 + 10.0)):
    """Relative errors over rays whose outer chord is >= 1/4 of the longest."""
    g = ProjectionGeometry(angles=angles, detector_shape=(64, 64),
                           pixel_spacing=(4.0, 4.0)).resolve(vol)
    ref = ph.project(g)
    chords = ph.project_chords(g)
    sel = chords >= chords.max() / 4
    drr = render_drr(vol, g, method, units="mu")
    err = np.abs(drr - ref)[sel] / ref[sel]
    print(f"{method}: {sel.sum()} rays, median rel. error {np.median(err):.3%}, "
          f"99th percentile {np.percentile(err, 99):.3%}")
    return err


@pytest.fixture(scope="module")
def fine_phantom():
    """The default ellipsoid chest voxelised at 0.25 mm on its bounding box (~1.9 GB):
    fine enough that partial-volume voxelisation error is below the renderer tolerance."""
    ph = default_ellipsoid_phantom()
    lo, hi = ph.bounds()
    h = 0.25
    shape = tuple(int(np.ceil((b - a) / h)) + 2 for a, b in zip(lo, hi))
    return ph, ph.voxelize(shape, h)


@pytest.mark.slow
def test_exact_renderer_matches_closed_form(fine_phantom):
    err = _errors(*fine_phantom, "exact")
    assert err.size > 5000
    assert np.median(err) <= 1e-3, np.median(err)
    assert np.percentile(err, 99) <= 5e-3, np.percentile(err, 99)


@pytest.mark.slow
def test_fast_renderer_matches_closed_form(fine_phantom):
    err = _errors(*fine_phantom, "fast")
    assert np.median(err) <= 2e-3, np.median(err)
    assert np.percentile(err, 99) <= 1e-2, np.percentile(err, 99)


def test_renderers_match_closed_form_on_coarse_grid():
    """The fast default path at 1 mm already beats the exactness bounds on a smooth body."""
    ph = default_ellipsoid_phantom()
    vol = ph.voxelize((256, 256, 256), 1.0)
    err = _errors(ph, vol, "fast", angles=(0.0, 37.0, 90.0))
    assert np.median(err) <= 2e-3
    assert np.percentile(err, 99) <= 2e-2
    err = _errors(ph, vol, "exact", angles=(0.0, 37.0, 90.0))
    assert np.median(err) <= 5e-3


# ---------------------------------------------------------------- the real CT

@pytest.fixture(scope="module")
def real_ct(shared_data):
    from XrayWorldModel.io import read_ct
    return read_ct(shared_data / "chest_ct.nii.gz")


@pytest.fixture(scope="module")
def real_labels(shared_data):
    from XrayWorldModel.io import read_ct
    labels = read_ct(shared_data / "chest_ct_labels.nii.gz")
    with open(shared_data / "chest_ct_labels.csv") as f:
        names = {row["structure"]: int(row["id"]) for row in csv.DictReader(f)}
    return labels, names


def _mask_column_centroid(labels, ids, angle, ct):
    mask = np.isin(np.rint(labels.array).astype(int), ids).astype(np.float32)
    g = ProjectionGeometry(angles=(angle,), detector_shape=(128, 128),
                           pixel_spacing=(4.0, 4.0)).resolve(ct)
    drr = render_drr(Volume(mask, labels.affine), g, units="mu")[0]
    cols = np.arange(drr.shape[1])
    return (drr.sum(axis=0) * cols).sum() / drr.sum(), drr.shape[1]


def test_orientation_heart_right_half_at_0_spine_right_half_at_90(real_ct, real_labels):
    labels, names = real_labels
    heart = [names["heart"]]
    spine = [v for k, v in names.items() if k.startswith("vertebrae_")]
    c, w = _mask_column_centroid(labels, heart, 0.0, real_ct)
    assert c > w / 2 + 5, f"heart centroid column {c:.1f} of {w} at 0 deg (PA)"
    c, w = _mask_column_centroid(labels, spine, 90.0, real_ct)
    assert c > w / 2 + 5, f"spine centroid column {c:.1f} of {w} at 90 deg (left lateral)"
    c, w = _mask_column_centroid(labels, heart, 180.0, real_ct)
    assert c < w / 2 - 5, "AP view mirrors PA: heart in the left half"


def test_fast_matches_exact_on_real_ct(real_ct):
    g = ProjectionGeometry(angles=(0.0, 45.0, 90.0), detector_shape=(256, 256),
                           pixel_spacing=(2.0, 2.0))
    fast = render_drr(real_ct, g, "fast")
    exact = render_drr(real_ct, g, "exact")
    for a in range(3):
        rel = np.linalg.norm(fast[a] - exact[a]) / np.linalg.norm(exact[a])
        assert rel <= 0.01, (g.angles[a], rel)
    # bone is bright: the spine column in the middle beats the lung fields
    mid = exact[0, 100:160]
    assert mid[:, 118:138].mean() > mid[:, 60:80].mean()


# ---------------------------------------------------------------- convention

def _point_ball(center, radius=3.0, n=72, h=1.5):
    ph = EllipsoidPhantom([Ellipsoid(center, (radius,) * 3, None, 1.0)])
    origin = -(np.array([n, n, n]) - 1) / 2 * h
    return ph.voxelize((n, n, n), h, origin=origin)


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0, 270.0, 33.0])
@pytest.mark.parametrize("method", ["fast", "exact"])
def test_point_lands_where_the_convention_says(angle, method):
    """An independent projection of a point (line from the source through it, meeting
    the detector plane) predicts the pixel where its DRR peaks."""
    p = np.array([20.0, -12.0, 15.0])
    vol = _point_ball(p)
    g = ProjectionGeometry(angles=(angle,), detector_shape=(96, 96), pixel_spacing=(1.0, 1.0),
                           isocenter=(0.0, 0.0, 0.0))
    drr = render_drr(vol, g, method, units="mu")[0]
    phi = np.deg2rad(angle)
    e = np.array([-np.sin(phi), np.cos(phi), 0.0])
    u = np.array([np.cos(phi), np.sin(phi), 0.0])
    v = np.array([0.0, 0.0, -1.0])
    s = 1500.0 * e
    d = -300.0 * e
    t = np.dot(d - s, e) / np.dot(p - s, e)
    hit = s + t * (p - s)
    j = np.dot(hit - d, u) / 1.0 + 47.5
    i = np.dot(hit - d, v) / 1.0 + 47.5
    ii, jj = np.indices(drr.shape)
    ci, cj = (drr * ii).sum() / drr.sum(), (drr * jj).sum() / drr.sum()
    assert abs(ci - i) < 0.3 and abs(cj - j) < 0.3, ((ci, cj), (i, j))


def test_pa_view_puts_patient_left_on_image_right():
    vol = _point_ball(np.array([40.0, 0.0, 0.0]))       # +x in LPS = patient's left
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(64, 64), pixel_spacing=(2.0, 2.0),
                           isocenter=(0.0, 0.0, 0.0))
    drr = render_drr(vol, g, units="mu")[0]
    assert drr[:, 32:].sum() > 100 * drr[:, :32].sum()
    vol = _point_ball(np.array([0.0, 0.0, 40.0]))       # +z = superior: top of the image
    drr = render_drr(vol, g, units="mu")[0]
    assert drr[:32].sum() > 100 * drr[32:].sum()


def test_parallel_beam_through_slab_gives_thickness():
    arr = np.zeros((20, 20, 20), np.float32)
    arr[:, 5:15, :] = 0.5                               # 10 voxels of 2 mm along y
    vol = Volume.from_spacing(arr, (2.0, 2.0, 2.0), origin=(-19.0, -19.0, -19.0))
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(8, 8), pixel_spacing=(2.0, 2.0),
                           beam="parallel", isocenter=(0.0, 0.0, 0.0))
    for method in ("fast", "exact"):
        drr = render_drr(vol, g, method, units="mu")[0]
        np.testing.assert_allclose(drr, 0.5 * 20.0, rtol=1e-5)


def test_detector_inside_volume_warns_and_integrates_only_to_detector():
    ph = EllipsoidPhantom([Ellipsoid((0, 0, 0), (80, 80, 80), None, 0.02)])
    vol = ph.voxelize((96, 96, 96), 2.0)
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(16, 16), pixel_spacing=(4.0, 4.0),
                           sdd=1540.0, sod=1500.0).resolve(vol)   # detector 40 mm past iso
    with pytest.warns(DetectorCutsVolumeWarning, match="detector plane"):
        drr = render_drr(vol, g, "exact", units="mu")
    ref = ph.project(g)                                  # closed form, clipped to the segment
    centre = ref[0, 6:10, 6:10]
    np.testing.assert_allclose(drr[0, 6:10, 6:10], centre, rtol=0.01)
    assert centre.max() < 0.02 * 125                     # far less than the full chord (160 mm)


def test_no_warning_with_default_geometry_on_chest_sized_volume():
    vol = Volume.from_spacing(np.zeros((10, 10, 10), np.float32), (40.0, 40.0, 40.0))
    g = ProjectionGeometry(angles=(0.0, 90.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DetectorCutsVolumeWarning)
        render_drr(vol, g)


def test_permuted_axes_and_tilt_render_the_same_physical_volume():
    """Index order is irrelevant: transposing the array with its affine columns gives the
    same DRR (this also drives the generic per-ray kernel), with and without tilt."""
    rng = np.random.default_rng(1)
    arr = rng.random((30, 26, 22)).astype(np.float32)
    vol = Volume.from_spacing(arr, (3.0, 2.5, 4.0), origin=(-40.0, -30.0, -40.0))
    perm = (2, 0, 1)
    aff = vol.affine.copy()
    aff[:3, :3] = vol.affine[:3, :3][:, perm]
    vol_p = Volume(np.ascontiguousarray(arr.transpose(perm)), aff)
    for tilt in (0.0, 12.0):
        g = ProjectionGeometry(angles=(0.0, 30.0, 100.0), detector_shape=(24, 20),
                               pixel_spacing=(5.0, 5.0), tilt=tilt).resolve(vol)
        for method in ("fast", "exact"):
            a = render_drr(vol, g, method, units="mu")
            b = render_drr(vol_p, g, method, units="mu")
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


def test_chunking_and_renderer_reuse_do_not_change_results():
    vol = default_ellipsoid_phantom().voxelize((64, 64, 64), 4.0)
    g = ProjectionGeometry.from_range(0, 360, 30, detector_shape=(16, 16), pixel_spacing=(8.0, 8.0))
    r = DRRRenderer(vol, units="mu")
    a = r.render(g, angles_per_chunk=1)
    b = r.render(g, angles_per_chunk=100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 16, 16) and a.dtype == np.float32


def test_hu_to_mu_clips_air_and_padding():
    mu = hu_to_mu(np.array([-2048.0, -1000.0, 0.0, 1000.0]), mu_water=0.02)
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04], atol=1e-9)
    t = hu_to_mu(torch.tensor([-3000.0, 0.0]), 0.03)
    assert t.tolist() == pytest.approx([0.0, 0.03])


def test_bad_method_units_and_device_are_clear_errors():
    vol = Volume.from_spacing(np.zeros((4, 4, 4), np.float32))
    g = ProjectionGeometry(angles=(0.0,), detector_shape=(4, 4))
    with pytest.raises(InputError, match="unknown DRR method"):
        render_drr(vol, g, "siddon-ish")
    with pytest.raises(InputError, match="units"):
        render_drr(vol, g, units="kelvin")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            render_drr(vol, g, device="cuda")


def test_all_zero_volume_renders_zeros():
    vol = Volume.from_spacing(np.full((8, 8, 8), -1000.0, np.float32))
    drr = render_drr(vol, ProjectionGeometry(angles=(0.0, 90.0), detector_shape=(4, 4)))
    assert drr.shape == (2, 4, 4) and not drr.any()


# ---------------------------------------------------------------- differentiability

def _small_case(seed=0, tilt=0.0):
    rng = np.random.default_rng(seed)
    arr = rng.random((12, 10, 9)).astype(np.float32)
    vol = Volume.from_spacing(arr, (4.0, 4.0, 5.0), origin=(-22.0, -18.0, -20.0))
    g = ProjectionGeometry(angles=(0.0, 50.0, 120.0), detector_shape=(10, 12),
                           pixel_spacing=(6.0, 6.0), tilt=tilt).resolve(vol)
    return vol, g


@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_adjoint_is_the_transpose_of_the_projector(tilt):
    """<A x, y> == <x, A^T y>: the backward pass is the exact adjoint."""
    vol, g = _small_case(tilt=tilt)
    x = torch.tensor(vol.array, requires_grad=True)
    y = torch.randn(g.n_angles, *g.detector_shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7))
    ax = project(x, vol.affine, g)
    (ax.double() * y).sum().backward()
    lhs = float((ax.detach().double() * y).sum())
    rhs = float((x.detach().double() * x.grad.double()).sum())
    # float32 sums: an unseeded y once met a 1.5e-5 rounding difference; a wrong adjoint is O(1)
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_projection_is_linear_and_gradient_matches_finite_difference():
    vol, g = _small_case(1)
    x = torch.tensor(vol.array, requires_grad=True)
    loss = (project(x, vol.affine, g) ** 2).sum()
    loss.backward()
    idx = (5, 4, 4)
    eps = 1e-2
    xp = x.detach().clone(); xp[idx] += eps
    xm = x.detach().clone(); xm[idx] -= eps
    fd = ((project(xp, vol.affine, g) ** 2).sum() - (project(xm, vol.affine, g) ** 2).sum()) / (2 * eps)
    assert float(x.grad[idx]) == pytest.approx(float(fd), rel=1e-3)


def test_torch_backend_matches_numba_backend():
    """The PyTorch (CUDA) renderer samples exactly like the numba one; run it on the CPU."""
    vol, g = _small_case(2)
    ref = render_drr(vol, g, units="mu")
    table = RayTable(vol.affine, g)
    start, delta, length = (torch.from_numpy(a).float() for a in table.dense())
    mu = torch.tensor(vol.array, requires_grad=True)
    out = joseph_project_torch(mu, start, delta, length, max_samples=500).reshape(ref.shape)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert mu.grad is not None and float(mu.grad.abs().sum()) > 0


# ---------------------------------------------------------------- column kernel, peers

def test_column_kernel_equals_ray_kernel_with_air_lines_and_steep_rays():
    """The column kernel (sheet per detector column, runs of slices, lines without
    attenuation skipped) gives the per-ray kernel's sums: on a random volume with all-zero
    lines and slabs, a detector reaching past the volume's ends (steep rays near its top
    and bottom rows fall back to ray by ray), cone and parallel beams."""
    from XrayWorldModel.drr import joseph
    from XrayWorldModel.drr.rays import dominant_axes
    rng = np.random.default_rng(5)
    arr = rng.random((37, 29, 23)).astype(np.float32)
    arr[:, 5:9, :] = 0.0            # whole lines along z without attenuation
    arr[20:24] = 0.0                # whole slices
    arr[:, :, :4] = 0.0
    vol = Volume.from_spacing(arr, (2.0, 2.5, 3.0), origin=(-30.0, -40.0, -35.0))
    steep = 0
    for beam, sdd, sod, dv in (("cone", 1800.0, 1500.0, 4.0), ("cone", 130.0, 90.0, 12.0),
                               ("parallel", 1800.0, 1500.0, 4.0)):
        g = ProjectionGeometry(angles=(0.0, 22.5, 45.0, 100.0, 200.0, 315.0), detector_shape=(40, 26),
                               pixel_spacing=(dv, 5.0), sdd=sdd, sod=sod, beam=beam).resolve(vol)
        table = RayTable(vol.affine, g)
        assert joseph.columns_share_paths(table)
        layouts = joseph.attenuation_layouts(vol.array, dominant_axes(table))
        cols = np.zeros(table.shape, np.float32)
        rays = np.zeros(table.shape, np.float32)
        joseph.joseph_project_columns(*layouts.vols, *layouts.occ[:2], table.index, table.lps,
                                      table.beam, cols)
        joseph.joseph_project(*layouts.vols, table.index, table.lps, table.beam, rays)
        assert rays.max() > 1.0
        np.testing.assert_allclose(cols, rays, rtol=1e-5, atol=1e-5 * rays.max())
        steep += int(dominant_axes(table) >= {2})
    assert steep == 1                 # the close-up geometry has rays steeper than 45 deg


def test_plastimatch_option_mapping_reproduces_the_exact_renderer(tmp_path):
    """bench_drr's Plastimatch rows rest on this mapping (Testing/benchmarks/plastimatch_drr.py):
    on an asymmetric case every view covers the body and `-i exact` equals our exact renderer."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
    import plastimatch_drr
    if plastimatch_drr.executable() is None:
        pytest.skip("plastimatch is not installed (Debian: apt-get install plastimatch)")
    res = plastimatch_drr.verify(tmp_path, threads=1)
    for alg in ("exact", "uniform"):
        assert res[alg]["ok"], (alg, res[alg])
    assert res["exact"]["max_rel_l2"] < 1e-5


def test_rays_built_on_the_device_equal_the_host_rays():
    """The CUDA renderer builds its rays where it renders (dense_rays_torch); they are the
    host's RayTable.dense(), cone and parallel, with tilt."""
    from XrayWorldModel.drr.joseph_torch import dense_rays_torch
    vol, _ = _small_case(3)
    for beam, tilt in (("cone", 0.0), ("cone", 11.0), ("parallel", 5.0)):
        g = ProjectionGeometry(angles=(0.0, 70.0, 250.0), detector_shape=(7, 9), pixel_spacing=(6.0, 5.0),
                               tilt=tilt, beam=beam).resolve(vol)
        table = RayTable(vol.affine, g)
        for host, dev in zip(table.dense(), dense_rays_torch(table, torch.device("cpu"))):
            np.testing.assert_allclose(dev.numpy(), host, rtol=1e-6, atol=1e-4)
