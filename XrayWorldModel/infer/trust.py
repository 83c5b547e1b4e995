"""The trust verdict: may this input's scores be shown? (DESIGN.md, "Trust")

A score is shown only when the input is in the model's domain, which takes three things:

1. **The features the heads read are within the reference statistics in the card.** The
   out-of-distribution (OOD) score is the Mahalanobis distance of the input's pooled latents
   from the cohort the heads were fitted on (Ledoit-Wolf covariance, :mod:`..probe.ood`);
   the threshold is the 99th percentile of the score on held-out in-domain cases, measured
   when the model was built and stored beside the statistics.
2. **The consistency score is acceptable:** the imagined volume re-projects onto the input
   with a normalised cross-correlation of at least :data:`MIN_CONSISTENCY` (0.7, the
   "inconsistent" boundary of :func:`.outputs.consistency_reading`: in-domain phantoms
   score above 0.9, so 0.7 only fails an input the model cannot explain at all).
3. **The input checks pass:** the radiograph screen
   (:func:`~XrayWorldModel.radiograph.check_radiograph`, which refuses outright) and the
   domain mapping's problems (:attr:`.domain.ModelInput.problems`, e.g. a mirrored image).

Any failure makes the verdict "out of distribution" and its reasons are listed. A model
file without an OOD reference (older files) still runs: the verdict then rests on the
consistency score and the input checks, and says so.

When the verdict is out of distribution the scores are **withheld** (``null`` in
``results.json``, with the reason), unless the caller forces them (``--force-scores``,
``forceScores=True``), which shows them marked as out of distribution. Probabilities are
stored clipped to [0.001, 0.999] with their logit beside them and shown as "> 0.99" /
"< 0.01" at the ends, never as 0 or 1.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..conventions import clip_probability, format_probability
from ..probe.features import extract_for_heads
from ..probe.ood import check_reference, scores as ood_scores
from .domain import ModelInput

#: The lowest consistency (NCC) the verdict accepts.
MIN_CONSISTENCY = 0.7
NO_REFERENCE = ("this model file has no out-of-distribution reference (an older model file): "
                "the verdict rests on the consistency score and the input checks alone")
#: Said beside scores when the card has no disclaimer of its own.
DEFAULT_DISCLAIMER = "research use only; not for clinical use"


def _ood(model, card: Mapping[str, Any], image) -> Optional[Dict[str, float]]:
    """The OOD score and threshold of the model input ``image`` ([1, 1, H, W] tensor), or
    None without a usable reference in the card."""
    ref = check_reference(card.get("ood"))
    if ref is None:
        return None
    feats = extract_for_heads(model, image, {"ood": {"features": ref.get("features", {})}})
    return {"score": float(ood_scores(ref, feats["ood"])[0]),
            "threshold": float(ref["threshold"])}


def assess_trust(model, card: Mapping[str, Any], image, consistency: float,
                 model_input: ModelInput) -> Dict[str, Any]:
    """The verdict on the model input ``image`` ([1, 1, H, W]) of ``model_input``, as
    ``results.json`` stores it under ``trust`` (see :func:`verdict`)."""
    return verdict(_ood(model, card, image), consistency, getattr(model_input, "problems", []))


def verdict(ood: Optional[Mapping[str, float]], consistency: float,
            problems=()) -> Dict[str, Any]:
    """``{"in_distribution", "ood_score", "ood_threshold", "consistency", "min_consistency",
    "reference", "reasons"}`` from the OOD score and threshold (None: no reference), the
    consistency score and the input checks' problems; ``reasons`` says what failed (and,
    for an old model file, that no OOD reference exists)."""
    failed: List[str] = []
    if ood is not None and not ood["score"] <= ood["threshold"]:
        failed.append(f"the features the scores are computed from are out of distribution "
                      f"(OOD score {ood['score']:.1f} > threshold {ood['threshold']:.1f}, the "
                      f"99th percentile of held-out in-domain cases)")
    if not consistency >= MIN_CONSISTENCY:
        failed.append(f"the imagined volume does not re-project onto the input (consistency "
                      f"{consistency:.2f} < {MIN_CONSISTENCY:.2f})")
    failed += [f"input check: {p}" for p in problems]
    return {"in_distribution": not failed,
            "ood_score": None if ood is None else round(ood["score"], 4),
            "ood_threshold": None if ood is None else round(ood["threshold"], 4),
            "consistency": float(consistency), "min_consistency": MIN_CONSISTENCY,
            "reference": ood is not None,
            "reasons": failed + ([] if ood is not None else [NO_REFERENCE])}


def failed_checks(trust: Mapping[str, Any]) -> str:
    """The checks the verdict failed, in one sentence."""
    failed = [r for r in trust.get("reasons", []) if r != NO_REFERENCE]
    return "; ".join(failed or ["see the trust verdict"])


def withheld_reason(trust: Mapping[str, Any]) -> str:
    """Why the scores are withheld, in one sentence."""
    return "out of distribution: " + failed_checks(trust)


def disclaimer(card_or_model: Mapping[str, Any]) -> str:
    """What the scores are (a demonstration model, ...): the card's ``disclaimer``, else its
    intended use, else :data:`DEFAULT_DISCLAIMER`."""
    return str(card_or_model.get("disclaimer") or card_or_model.get("intended_use")
               or DEFAULT_DISCLAIMER)


def output_scores(scores: Mapping[str, Any], trust: Mapping[str, Any], force: bool = False,
                  note: Optional[str] = None) -> Dict[str, Any]:
    """``results.json``'s ``scores``: probabilities clipped to [0.001, 0.999] with their
    logits beside them; all ``null`` with ``withheld`` giving the reason when the verdict is
    out of distribution and ``force`` is off; ``out_of_distribution`` marks forced ones."""
    has_heads = scores.get("risk") is not None or bool(scores.get("pathologies"))
    ood = not trust.get("in_distribution", False)
    out = {"risk": clip_probability(scores.get("risk")), "risk_logit": scores.get("risk_logit"),
           "risk_details": _clip_details(scores.get("risk_details")),
           "pathologies": None if not scores.get("pathologies") else
           {k: clip_probability(v) for k, v in scores["pathologies"].items()},
           "pathology_logits": scores.get("pathology_logits"),
           "calibrated": bool(scores.get("calibrated")), "out_of_distribution": ood,
           "forced": bool(force and ood and has_heads), "withheld": None,
           "disclaimer": note or DEFAULT_DISCLAIMER}
    if ood and not force and has_heads:
        for key in ("risk", "risk_logit", "risk_details", "pathologies", "pathology_logits"):
            out[key] = None
        out["withheld"] = withheld_reason(trust)
    return out


def _clip_details(details: Optional[Mapping[str, float]]):
    if not details:
        return None
    return {k: clip_probability(v) if k.endswith("probability_at_horizon") else float(v)
            for k, v in details.items()}


def verdict_line(trust: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    """One line saying what the verdict is and what it means for the scores."""
    if trust.get("in_distribution"):
        basis = (f"OOD score {trust['ood_score']:.1f} <= {trust['ood_threshold']:.1f}"
                 if trust.get("reference") else "no OOD reference in this model file")
        return (f"trust: in distribution ({basis}; consistency {trust['consistency']:.2f} >= "
                f"{trust['min_consistency']:.2f})")
    if scores.get("withheld"):
        return (f"scores withheld: {scores['withheld']} (--force-scores shows them, marked "
                f"out of distribution)")
    if scores.get("forced"):
        return (f"OUT OF DISTRIBUTION (scores shown only because they were forced): "
                f"{failed_checks(trust)}")
    return f"trust: {withheld_reason(trust)} (this model has no score heads)"


def score_lines(results: Mapping[str, Any]) -> List[str]:
    """What ``xray2xray infer`` prints about the scores of a ``results.json`` dict: the
    verdict, then (unless withheld) the scores with honest precision and what they are."""
    trust, s = results.get("trust") or {}, results.get("scores") or {}
    lines = [verdict_line(trust, s)]
    if not trust.get("reference", True):
        lines.append(f"note: {NO_REFERENCE}")
    if s.get("withheld"):
        return lines
    mark = " [OUT OF DISTRIBUTION]" if s.get("forced") else ""
    if s.get("risk") is not None:
        lines.append(f"cardiovascular risk {format_probability(s['risk'])}{mark}")
    if s.get("pathologies"):
        lines.append("pathologies: " + ", ".join(f"{k} {format_probability(v)}"
                                                 for k, v in s["pathologies"].items()) + mark)
    if s.get("risk") is not None or s.get("pathologies"):
        lines.append(f"scores: {s.get('disclaimer') or DEFAULT_DISCLAIMER}")
    return lines
