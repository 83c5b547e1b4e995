"""Deliberate one-line bugs, one per invariant a user relies on, each with the tests that
must catch it. ``run.py`` applies them one at a time to a scratch copy.

An anchor is an exact, unique piece of the current source; when the code moves, the
runner reports "anchor missing" and the entry here must be updated with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    anchor: str
    replacement: str
    tests: Tuple[str, ...]
    invariant: str


MUTATIONS = (
    Mutation("joseph-drops-last-slice", "XrayWorldModel/drr/joseph.py",
             "    return max(0, int(math.ceil(xa))), min(na - 1, int(math.floor(xb)))",
             "    return max(0, int(math.ceil(xa))), min(na - 2, int(math.floor(xb)))",
             ("Testing/test_drr.py",),
             "the fast renderer integrates through every slice of the volume"),
    Mutation("tilt-sign-flipped", "XrayWorldModel/geometry.py",
             "        e = math.cos(t) * e0 + math.sin(t) * z",
             "        e = math.cos(t) * e0 - math.sin(t) * z",
             ("Testing/test_oracles.py",),
             "positive tilt moves the source towards the head (DESIGN.md)"),
    Mutation("dicom-sorted-by-file-name", "XrayWorldModel/io/ct.py",
             "[_Series(uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))",
             "[_Series(uid, sorted(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)))",
             ("Testing/test_oracles.py",),
             "DICOM slices are stacked by position along the slice normal, not by file name"),
    Mutation("consistency-at-90-deg", "XrayWorldModel/infer/pipeline.py",
             "        isocentric_geometry(sampling, [0.0]))[0]",
             "        isocentric_geometry(sampling, [90.0]))[0]",
             ("Testing/test_oracles.py",),
             "the consistency score re-projects the volume at the input's own angle (0 deg)"),
    Mutation("heads-on-mirrored-input", "XrayWorldModel/infer/pipeline.py",
             "    scores = apply_card_heads(model, card, x)",
             "    scores = apply_card_heads(model, card, x.flip(-1))",
             ("Testing/test_oracles.py",),
             "the scores are the card's heads applied to the features of the model input itself"),
    Mutation("prior-ignored", "XrayWorldModel/infer/pipeline.py",
             "        mu = Volume(prior.reconstruct(views, geometry, grid, mu_water), grid.affine)",
             "        mu = fdk(views, geometry, like=grid)",
             ("Testing/test_oracles.py",),
             "a volume prior that inference says it used is really used"),
    Mutation("slicer-requirements-not-installed", "Xray2Xray/Xray2Xray.py",
             """            deps.pip_ensure(deps.load_requirements(path), requester="Xray2Xray",
                            skip_in_testing=False)""",
             "            pass",
             ("Testing/test_slicer_dependencies.py",),
             "the Slicer module installs the package's requirements before first use"),
    Mutation("slicer-self-test-skips-install", "Xray2Xray/Xray2Xray.py",
             "                            skip_in_testing=False)",
             "                            skip_in_testing=True)",
             ("Testing/test_slicer_dependencies.py",),
             "the self-test installs what it imports (pip_ensure skips installs in testing mode)"),
    Mutation("slicer-torch-not-installed", "Xray2Xray/Xray2Xray.py",
             "        torchModule = torchLogic.installTorch(askConfirmation=False,",
             "        torchModule = object() or torchLogic.installTorch(askConfirmation=False,",
             ("Testing/test_slicer_dependencies.py",),
             "torch comes from the PyTorch extension when it is missing"),
    Mutation("eval-scores-mean-view-as-prediction", "XrayWorldModel/train/evaluate.py",
             "for name, img in zip(SCORED, (pred[n], true.views[n, 0], mean_views[angle])):",
             "for name, img in zip(SCORED, (mean_views[angle], true.views[n, 0], mean_views[angle])):",
             ("Testing/test_oracles.py",),
             "eval-views scores the world model's own prediction, not a baseline"),
    Mutation("resume-skips-torch-rng", "XrayWorldModel/train/trainer.py",
             '            torch.set_rng_state(state["torch_rng"])',
             "            pass",
             ("Testing/test_train.py::test_resume_after_sigkill_is_exact",),
             "resume restores torch's RNG (dropout), so a resumed run equals an uninterrupted one"),
    Mutation("slicer-drrs-on-first-plane", "Xray2Xray/Xray2XrayLib/core.py",
             "                                        detectorAffine=geometry.detector_affine(a))",
             "                                        detectorAffine=geometry.detector_affine(0))",
             ("Testing/test_slicer_lib.py",),
             "each DRR node lies on its own view's detector plane (on a fresh clone too)"),
    Mutation("checkpoint-sha-unchecked", "XrayWorldModel/train/checkpoint.py",
             '    if digest != card["sha256"]:',
             "    if False:",
             ("Testing/test_train.py::test_checkpoint_round_trip_pruning_and_tamper_detection",),
             "a tampered or truncated checkpoint is refused by its SHA256"),
    Mutation("resume-skips-optimiser-state", "XrayWorldModel/train/trainer.py",
             '            self.opt.load_state_dict(state["optimizer"])',
             "            pass",
             ("Testing/test_train.py::test_resume_after_sigkill_is_exact",),
             "resume restores AdamW's moments, so a resumed run equals an uninterrupted one"),
    Mutation("ddp-ranks-share-a-slice", "XrayWorldModel/train/trainer.py",
             "        lo = self.rank * per",
             "        lo = 0",
             ("Testing/test_train.py::test_torchrun_two_ranks_match_one_process",),
             "each torchrun rank trains on its own slice of the globally planned batch"),
    Mutation("ct-duplicate-slices-merged", "XrayWorldModel/io/ct.py",
             "    repeated = np.flatnonzero(steps < SAME_POSITION_MM)",
             "    repeated = np.flatnonzero(steps < -1.0)",
             ("Testing/test_io.py",),
             "two copies of one slice are refused, not stacked into a fake volume"),
    Mutation("nifti-zero-spacing-accepted", "XrayWorldModel/io/ct.py",
             '    check_spacing(nifti_pixdim(buf[:540]), p, "NIfTI header (pixdim)")',
             "    pass",
             ("Testing/test_io.py",),
             "a NIfTI with zero pixdim is refused, not read at ITK's silent 1 mm"),
    Mutation("noise-accepted-as-radiograph", "XrayWorldModel/radiograph.py",
             "    if correlation < MIN_NEIGHBOUR_CORRELATION:",
             "    if correlation < -2.0:",
             ("Testing/test_io.py",),
             "an image of noise is not taken for a radiograph"),
)
