"""The cohort's cardiovascular risk: calcium deposits drawn from a latent risk factor, and a
known model of an event and its time.

Everything here is pure sampling (no voxels), so labels for thousands of cases cost nothing:

* latent risk ``z ~ N(0, 1)``;
* calcium deposits: ``count ~ Poisson(exp(log_mean_count + count_per_risk * z))`` (capped);
  each deposit is coronary (LAD, LCx, RCA, left main) with probability ``coronary_fraction``
  or aortic (arch, descending), has an equivalent-sphere radius
  ``r ~ LogNormal(log(radius_median_mm) + radius_per_risk * z, radius_sigma)`` (clipped) and a
  density uniform in ``hu_range``; its true volume is ``4/3 pi r^3``;
* the linear predictor ``lp = intercept + coronary * log1p(Vcor / ref) + aortic *
  log1p(Vao / ref) + heart * (heart_scale - 1)`` with volumes in mm^3;
* the event within the horizon is ``Bernoulli(sigmoid(lp))`` (a logistic model, exactly);
  an event's time is drawn from a Weibull proportional-hazards law with the same ``lp``
  (``S(t) = exp(-(t / scale)^shape * exp(lp))``) conditioned on falling within the horizon;
  cases without an event are censored at the horizon (administrative censoring).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

CORONARY_SITES = ("lad", "lcx", "rca", "lm")
AORTIC_SITES = ("arch", "desc")
#: relative frequency of each site within its group
SITE_WEIGHTS = {"lad": 0.4, "lcx": 0.2, "rca": 0.3, "lm": 0.1, "arch": 0.55, "desc": 0.45}


def agatston_weight(hu: float) -> int:
    """Agatston density factor of a lesion's peak HU (0 below the 130 HU threshold)."""
    return 0 if hu < 130 else 1 if hu < 200 else 2 if hu < 300 else 3 if hu < 400 else 4


@dataclass(frozen=True)
class CalciumModel:
    """How many calcium deposits a case has, where, how big and how dense (see module doc)."""

    log_mean_count: float = 0.6
    count_per_risk: float = 1.0
    max_count: int = 30
    radius_median_mm: float = 1.9
    radius_per_risk: float = 0.2
    radius_sigma: float = 0.3
    radius_range_mm: Tuple[float, float] = (1.0, 4.5)
    coronary_fraction: float = 0.6
    hu_range: Tuple[float, float] = (300.0, 1500.0)
    elongation: Tuple[float, float] = (1.0, 2.2)   # long/short axis along the vessel

    def sample(self, rng: np.random.Generator, z: float) -> List[Dict[str, float]]:
        """Deposits for latent risk ``z``. A fixed number of draws is made per slot, so the
        first deposits do not change when the count does."""
        count = min(int(rng.poisson(math.exp(self.log_mean_count + self.count_per_risk * z))),
                    self.max_count)
        out = []
        cor_w = np.array([SITE_WEIGHTS[s] for s in CORONARY_SITES])
        ao_w = np.array([SITE_WEIGHTS[s] for s in AORTIC_SITES])
        for i in range(self.max_count):
            u = rng.uniform(size=6)
            g = rng.standard_normal()
            if i >= count:
                continue
            coronary = u[0] < self.coronary_fraction
            sites, w = (CORONARY_SITES, cor_w) if coronary else (AORTIC_SITES, ao_w)
            site = sites[int(np.searchsorted(np.cumsum(w / w.sum()), u[1], side="right"))]
            r = math.exp(math.log(self.radius_median_mm) + self.radius_per_risk * z
                         + self.radius_sigma * g)
            r = float(np.clip(r, *self.radius_range_mm))
            out.append({"site": site, "coronary": bool(coronary), "t": float(u[2]),
                        "theta": float(2 * math.pi * u[3]), "radius_mm": r,
                        "elongation": float(self.elongation[0] + (self.elongation[1]
                                                                  - self.elongation[0]) * u[4]),
                        "hu": float(self.hu_range[0] + (self.hu_range[1] - self.hu_range[0]) * u[5]),
                        "volume_mm3": 4.0 / 3.0 * math.pi * r ** 3})
        return out


def calcium_summary(deposits: List[Dict[str, float]]) -> Dict[str, float]:
    """True calcium volumes (mm^3), count, and an Agatston-like score: per coronary lesion,
    density weight x volume / 3 mm (its area summed over 3 mm slices), summed."""
    cor = sum(d["volume_mm3"] for d in deposits if d["coronary"])
    ao = sum(d["volume_mm3"] for d in deposits if not d["coronary"])
    agatston = sum(agatston_weight(d["hu"]) * d["volume_mm3"] / 3.0
                   for d in deposits if d["coronary"])
    return {"calcium_volume_mm3": cor + ao, "coronary_calcium_mm3": cor,
            "aortic_calcium_mm3": ao, "calcium_count": len(deposits), "agatston": agatston}


@dataclass(frozen=True)
class RiskModel:
    """The known outcome model (see module doc); the coefficients are its ground truth."""

    intercept: float = -2.3
    coronary: float = 0.75          # per log1p(coronary calcium mm^3 / calcium_ref_mm3)
    aortic: float = 0.35            # per log1p(aortic calcium mm^3 / calcium_ref_mm3)
    calcium_ref_mm3: float = 25.0
    heart: float = 3.0              # per unit of heart_scale above 1 (cardiomegaly: 1.2-1.5)
    horizon_years: float = 10.0
    weibull_shape: float = 1.3
    weibull_scale_years: float = 10.0

    def linear_predictor(self, coronary_mm3: float, aortic_mm3: float,
                         heart_scale: float) -> float:
        return (self.intercept
                + self.coronary * math.log1p(coronary_mm3 / self.calcium_ref_mm3)
                + self.aortic * math.log1p(aortic_mm3 / self.calcium_ref_mm3)
                + self.heart * (heart_scale - 1.0))

    @staticmethod
    def probability(lp: float) -> float:
        return 1.0 / (1.0 + math.exp(-lp))

    def outcome(self, lp: float, u_event: float, u_time: float) -> Dict[str, float]:
        """``event`` (0/1), ``time`` (years), ``censored`` (0/1) from two uniforms."""
        prob = self.probability(lp)
        tau = self.horizon_years
        if u_event >= prob:
            return {"event": 0, "time": tau, "censored": 1}
        k, lam = self.weibull_shape, self.weibull_scale_years
        f_tau = -math.expm1(-((tau / lam) ** k) * math.exp(lp))        # P(T <= tau)
        t = lam * (-math.log1p(-u_time * f_tau) * math.exp(-lp)) ** (1.0 / k)
        return {"event": 1, "time": float(min(max(t, 1e-3), tau)), "censored": 0}

    def as_dict(self) -> Dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


__all__ = ["CalciumModel", "RiskModel", "calcium_summary", "agatston_weight",
           "CORONARY_SITES", "AORTIC_SITES"]
