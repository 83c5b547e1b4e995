"""``results.md``: the study's tables in markdown, from ``results.json`` alone."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

from .config import METHOD_TITLES
from .probes import TASK_TITLES, TASKS


def _cell(entry: Optional[Mapping[str, Any]]) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95")
    s = f"{entry['value']:.3f}"
    return s + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _diff(entry: Optional[Mapping[str, Any]]) -> str:
    if not entry or entry.get("difference") is None:
        return "n/a"
    p = entry.get("p_value")
    star = "*" if p is not None and p < 0.05 else ""
    return f"{entry['difference']:+.3f} (p={p:.3f}){star}"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _fraction_title(frac: str, n: Optional[int]) -> str:
    pct = f"{float(frac) * 100:g} %"
    return f"{pct} of the training labels" + (f" ({n} cases)" if n is not None else "")


def _view_rows(novel_view: Mapping[str, Any]) -> List[List[str]]:
    """PSNR/SSIM rows of the predicted view and its two baselines at each angle."""
    rows = []
    for angle, r in novel_view.items():
        for name, title in (("world_model", "world model"), ("copy_input", "copy the input"),
                            ("mean_view", "mean training view")):
            rows.append([f"{angle} deg from 0 deg", title, f"{r[name + '_psnr']:.2f}",
                         f"{r[name + '_ssim']:.3f}"])
    return rows


def render_markdown(results: Mapping[str, Any]) -> str:
    methods = list(results["methods"])
    wm = results.get("world_model") or {}
    lines = _header(results)
    lines += _probe_sections(results, methods)
    lines += _hidden_section(results, methods)
    lines += _world_model_section(wm)
    lines += _real_anatomy_section(wm.get("real_anatomy") or {})
    lines += _training_section(results, methods)
    lines += ["Figures: `roc.png` (ROC curves per task), `views.png` (frontal input, true and "
              "predicted lateral, true and reconstructed mid-slices).", ""]
    return "\n".join(lines)


def _header(results: Mapping[str, Any]) -> List[str]:
    """Title, the smoke warning, cohort, encoder, compute and hardware."""
    cfg = results["config"]
    cohort = results["cohort"]
    lines: List[str] = [f"# In-silico study (`{results['config_name']}`, seed {cfg['seed']})", ""]
    if results["config_name"] == "insilico-smoke":
        lines += ["> Smoke configuration: a pipeline check on a tiny cohort with a few training "
                  "steps. The numbers below mean nothing about the methods.", ""]
    m = cfg["model"]
    return lines + [
        f"Cohort: {cohort['n_cases']} synthetic chest CTs (seeds {cohort['first_seed']}.."
        f"{cohort['first_seed'] + cohort['n_cases'] - 1}), {cohort['n_train']} for training "
        f"and {cohort['n_test']} held out for testing. Encoder (every method): ViT "
        f"{m['image_size']} px, patches {m['patch_size']} x {m.get('patch_width') or m['patch_size']} "
        f"px, width {m['embed_dim']}, depth "
        f"{m['depth']}. Compute: {cfg['budget']['encoder_samples']} encoder samples per trained "
        "method. Metrics on the test cases with percentile-bootstrap 95 % CIs "
        f"({cfg['probe']['bootstrap']} resamples).",
        "",
        f"Hardware: {results['environment']['hardware']}; wall time "
        f"{results['timing']['total_s'] / 60:.1f} min.",
        ""]


def _probe_sections(results: Mapping[str, Any], methods: List[str]) -> List[str]:
    """The probe metrics per label fraction, and Xray2Xray minus each other method."""
    lines = ["## Probe metrics (AUROC; C-index for time to event)", ""]
    header = ["Method", *(TASK_TITLES[t] for t in TASKS)]
    for frac in results["label_fractions"]:
        n = results["labelled"].get(frac, {}).get("n")
        lines += [f"### {_fraction_title(frac, n)}", ""]
        rows = [[METHOD_TITLES.get(meth, meth),
                 *(_cell(results["results"][meth][frac].get(t)) for t in TASKS)]
                for meth in methods]
        lines += _table(header, rows) + [""]
    if results.get("comparisons"):
        lines += ["## Xray2Xray minus each other method (paired bootstrap; * p < 0.05)", ""]
        for frac in results["label_fractions"]:
            lines += [f"### {_fraction_title(frac, None)}", ""]
            rows = [[f"vs {METHOD_TITLES.get(other, other)}",
                     *(_diff(results["comparisons"][other][frac].get(t)) for t in TASKS)]
                    for other in results["comparisons"]]
            lines += _table(["Comparison", *(TASK_TITLES[t] for t in TASKS)], rows) + [""]
    return lines


#: Volume rows: result key, title in the world-model section, title in the real-anatomy one.
_VOLUME_ROWS = (
    ("world_model", "world model (imagined sweep on the mean-CT prior)",
     "volume: world model on the prior"),
    ("world_model_fdk_only", "world model (FDK of the imagined sweep alone)",
     "volume: world model, FDK alone"),
    ("mean_ct", "mean training CT", "volume: mean training CT"),
    ("copied_frontal_fdk", "FDK of the copied frontal view", "volume: FDK of the copied frontal"))


def _world_model_section(wm: Mapping[str, Any]) -> List[str]:
    """Novel-view PSNR/SSIM and the volume from the frontal view, with their baselines."""
    lines: List[str] = []
    if wm.get("novel_view"):
        lines += ["## World model: novel views and volume", ""]
        lines += _table(["View", "Prediction", "PSNR (dB)", "SSIM"],
                        _view_rows(wm["novel_view"])) + [""]
    if wm.get("volume"):
        v = wm["volume"]
        rows = [[title, f"{v[name]['pearson_r']:.3f}", f"{v[name]['ssim']:.3f}"]
                for name, title, _ in _VOLUME_ROWS if name in v]
        lines += [f"Volume from the frontal view ({v['n_ct']} test CTs, {v['volume_size']}^3):", ""]
        lines += _table(["Volume", "Pearson r", "SSIM"], rows) + [""]
        d = v.get("world_model_vs_mean_ct")
        if d:
            lines += ["World model minus mean CT, per test CT (mean, bootstrap 95% CI, wins): " +
                      "; ".join(f"{k} {d[k]['mean']:+.4f} [{d[k]['ci95'][0]:+.4f}, "
                                f"{d[k]['ci95'][1]:+.4f}], {d[k]['wins']}/{d[k]['n']}"
                                for k in ("pearson_r", "ssim")), ""]
    return lines


def _real_anatomy_section(real: Mapping[str, Any]) -> List[str]:
    """The world model on a real CT's DRRs and on a real radiograph (or why skipped)."""
    if not real:
        return []
    lines = ["## Real anatomy: the same world model outside its synthetic training", ""]
    ct, cxr = real.get("ct") or {}, real.get("cxr") or {}
    if "skipped" in ct:
        lines += [f"Real CT: skipped ({ct['skipped']}).", ""]
    elif ct:
        rows = _view_rows(ct["novel_view"])
        v = ct["volume"]
        rows += [["volume", title, f"r {v[name]['pearson_r']:.3f}", f"{v[name]['ssim']:.3f}"]
                 for name, _, title in _VOLUME_ROWS if name in v]
        lines += [f"DRRs of the real CT `{ct['file']}`:", ""]
        lines += _table(["View", "Prediction", "PSNR (dB) / Pearson r", "SSIM"], rows) + [""]
    if "skipped" in cxr:
        lines += [f"Real radiograph: skipped ({cxr['skipped']}).", ""]
    elif cxr:
        notes = "; ".join(cxr["preprocessing"].get("notes") or []) or "none"
        lines += [f"Real radiograph `{cxr['file']}`: consistency score (NCC of the "
                  f"reconstruction re-projected at 0 deg with the input) "
                  f"{cxr['consistency']:.3f}; preprocessing notes: {notes}.", ""]
    return lines


def _training_section(results: Mapping[str, Any], methods: List[str]) -> List[str]:
    """Steps, batch, encoder samples, final loss and wall time of each trained encoder."""
    rows = []
    for meth in methods:
        tr = results["methods"][meth].get("training")
        if not tr:
            rows.append([METHOD_TITLES.get(meth, meth), "-", "-", "-", "-", "-"])
            continue
        for key, rec in (tr.items() if "steps" not in tr else [("", tr)]):
            label = METHOD_TITLES.get(meth, meth) + (f" ({key})" if key else "")
            rows.append([label, str(rec["steps"]), str(rec["batch_size"]),
                         str(rec["encoder_samples"]), f"{rec['final_loss']:.4f}",
                         f"{rec['wall_s']:.0f}"])
    return ["## Training", ""] + _table(
        ["Method", "Steps", "Batch", "Encoder samples", "Final loss", "Wall (s)"], rows) + [""]


def _hidden_section(results: Mapping[str, Any], methods: List[str]) -> List[str]:
    """AUROC on the positives the frontal view shows and on those it hides, per finding."""
    hf = results.get("hidden_findings") or {}
    res = hf.get("results") or {}
    if not res:
        return []
    tasks = list(next(iter(next(iter(res.values())).values())))
    lines = ["## Findings the frontal view hides by superposition", "",
             "AUROC of the visible and of the hidden positives, each against all negatives "
             "(n = number of such positives among the test cases).", ""]
    header = ["Method"] + [f"{TASK_TITLES[t]}, {part}" for t in tasks
                           for part in ("visible", "hidden")]
    for frac in results["label_fractions"]:
        lines += [f"### {_fraction_title(frac, None)}", ""]
        first = res[methods[0]][frac]
        n_row = ["n"] + [str(first[t][part].get("n_pos", "")) for t in tasks
                         for part in ("visible", "hidden")]
        rows = [n_row] + [[METHOD_TITLES.get(m, m)] + [_cell(res[m][frac][t][part]) for t in tasks
                                                     for part in ("visible", "hidden")]
                          for m in methods]
        lines += _table(header, rows) + [""]
        comp = hf.get("comparisons") or {}
        if comp:
            lines += ["Xray2Xray minus each method on the hidden positives (paired bootstrap):", ""]
            rows = [[f"vs {METHOD_TITLES.get(o, o)}", *(_diff(comp[o][frac].get(t)) for t in tasks)]
                    for o in comp]
            lines += _table(["Comparison", *(TASK_TITLES[t] + ", hidden" for t in tasks)],
                            rows) + [""]
    return lines


__all__ = ["render_markdown"]
