"""Linear probes on frozen world-model latents (``xray2xray probe``).

* :mod:`.features` - pooled latents of the observed view and of imagined views; frontal
  DRRs of CTs rendered the way the model saw them in training.
* :mod:`.heads`    - logistic (binary / multi-label) and Cox heads, fitted with
  scikit-learn / numpy and stored as plain JSON; :func:`apply_heads` needs numpy only.
* :mod:`.metrics`  - AUROC and Harrell's C-index, their bootstrap CIs, the paired
  bootstrap comparison of two models, and :class:`ProbeError`.
* :mod:`.evaluate` - stratified K-fold cross-validation: out-of-fold predictions.
* :mod:`.acquisition` - CTs seen as inference receives radiographs (random acquisitions),
  what heads, calibration and the OOD reference are fitted on.
* :mod:`.calibration` - Platt scaling on out-of-fold logits, ECE, reliability diagrams.
* :mod:`.ood`      - the out-of-distribution reference (Mahalanobis, Ledoit-Wolf) and score.
* :mod:`.heldout`  - the OOD threshold and held-out ECE / AUROC on CTs never used to fit.
* :mod:`.run`      - labels CSV, fitting a task end to end (:func:`probe_task`, what
  ``xray2xray probe`` runs), saving heads into a model card.
* :mod:`.datasets` - radiograph datasets: folders, manifests, NIH ChestX-ray14, CheXpert and
  MIMIC-CXR-JPG label files, the finding-name table, views, patients, test splits.
* :mod:`.radiograph_features` - their features through the inference path: streamed,
  batched, cached per image on disk, resumable, sharded.
* :mod:`.radiographs` - a probe on a radiograph dataset end to end (:func:`probe_radiographs`).

Names are imported lazily, so ``apply_heads`` (used by inference) never pulls in torch
or scikit-learn.
"""
from __future__ import annotations

from ..lazy import lazy_exports

#: The five pathologies of the paper: default label names and CSV columns of ``probe``.
PATHOLOGIES = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion")
#: Default binary outcome column(s) of the risk probe.
RISK_LABELS = ("event",)

_EXPORTS = {
    "features": ["extract_features", "extract_for_heads", "feature_spec", "pooled_features",
                 "predict_heads",
                 "render_frontal_views", "CTSkippedWarning"],
    "heads": ["apply_head", "apply_heads", "fit_cox", "fit_logistic", "linear_predictor",
              "check_binary", "check_survival", "check_task_entry", "task_entry"],
    "metrics": ["ProbeError", "auroc", "auroc_ci", "bootstrap_ci", "c_index", "c_index_ci",
                "multilabel_auroc_ci", "paired_bootstrap", "paired_bootstrap_test"],
    "evaluate": ["cv_cox", "cv_logistic", "FoldWarning"],
    "acquisition": ["Acquisition", "acquired_view", "render_acquired_views"],
    "calibration": ["calibrate_labels", "ece", "fit_platt", "reliability", "reliability_diagram"],
    "ood": ["fit_reference", "set_threshold", "check_reference"],
    "run": ["LabelsError", "LabelTable", "build_targets", "fit_task", "match_ids",
            "probe_task", "read_labels_csv", "save_heads_into"],
    "datasets": ["FINDINGS", "DatasetError", "read_dataset", "is_radiograph_source"],
    "radiograph_features": ["extract_dataset_features"],
    "radiographs": ["probe_radiographs"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
