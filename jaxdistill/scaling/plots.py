"""The sweep report's plots (PNG, matplotlib Agg): metric vs r per format with fitted curves and
bands, metric vs D, the in-domain vs general trade-off, collapse points with intervals. Split from
`report.py` (which computes every number and writes the markdown) along that seam; it reuses the
report's table helpers and formatting."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jaxdistill.atomic_files import atomic_write  # noqa: E402
from jaxdistill.scaling.sweep_table import (FORMAT_ORDER, IN_DOMAIN, R_LIMIT, cell_means, done_rows, fmt_int,  # noqa: E402
                                           general_metrics, level, num, ordered, point_se, suites)

DPI = 120

# ---------------------------------------------------------------------------------------------
# plots


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    plt.close(fig)


def _fit_groups(fits: dict | None, **want) -> list[dict]:
    """fits groups whose key agrees with `want` on every field the key has."""
    return [g for g in (fits or {}).get("groups", [])
            if all(str(g.get("key", {})[k]) == str(v) for k, v in want.items() if k in g.get("key", {}))]


def _curve(metric_fit: dict | None, D) -> dict | None:
    for k, c in ((metric_fit or {}).get("curves") or {}).items():
        if num(k) is not None and num(D) is not None and float(k) == float(D):
            return c
    return None


def _finish_panels(fig, axes, ylabel: str, title: str, path: Path) -> None:
    """A row of panels sharing y: the y label on the first, the legend on the last, the title, saved."""
    axes[0][0].set_ylabel(ylabel)
    _legend(axes[0][-1], loc="best")
    fig.suptitle(title)
    _save(fig, path)


def _legend(ax, **kw):
    h, lab = ax.get_legend_handles_labels()
    seen = dict(zip(lab, h))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=7, **kw)


def _levels(ax, teacher, chance):
    if teacher is not None:
        ax.axhline(teacher, color="black", ls="--", lw=1, label="teacher")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")


def _metric_levels(df, fits, metric) -> tuple[float | None, float | None]:
    fit = next((g["metrics"][metric] for g in (fits or {}).get("groups", []) if metric in g.get("metrics", {})), {})
    base = metric.rsplit(".", 1)[0]
    chance = level(df, f"{base}.chance", fit.get("chance")) if metric.endswith(".acc") else None
    return level(df, f"teacher.{metric}", fit.get("teacher")), chance


def _plot_vs_r(df, fits, metric, schedule, method, colors, path) -> bool:
    """(a) metric vs r, one line per format, observed ± SE and fitted curve with band; panel per D."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    fgs = {f: _fit_groups(fits, format=f, schedule=schedule, method=method) for f in colors}
    Ds = set(sub["D"].dropna()) | {float(k) for gs in fgs.values() for g in gs
                                   for k in ((g["metrics"].get(metric) or {}).get("curves") or {})}
    if not Ds or (metric not in sub and not any(fgs.values())):
        return False
    Ds = sorted(Ds)
    fig, axes = plt.subplots(1, len(Ds), figsize=(4.4 * len(Ds), 3.8), sharey=True, squeeze=False)
    teacher, chance = _metric_levels(df, fits, metric)
    for ax, D in zip(axes[0], Ds):
        drawn = set()
        for f, color in colors.items():
            pts = sub[(sub["format"] == f) & (sub["D"] == D)].sort_values("r") if metric in sub else sub[:0]
            if len(pts):
                ax.errorbar(pts["r"], pts[metric], yerr=point_se(pts, metric).fillna(0), color=color, capsize=3,
                            ms=4, fmt="o" if fgs[f] else "o-", lw=1, label=f"{f} observed")
            for g in fgs[f]:
                c = _curve(g["metrics"].get(metric), D)
                if c is None or id(g) in drawn:
                    continue
                drawn.add(id(g))
                ax.plot(c["r"], c["mid"], color=color, lw=1.5, label=f"{f} fit")
                if c.get("lo") and c.get("hi"):
                    ax.fill_between(c["r"], np.asarray(c["lo"], float), np.asarray(c["hi"], float),
                                    color=color, alpha=0.18, lw=0)
        _levels(ax, teacher, chance)
        ax.set_title(f"D = {fmt_int(D)}")
        ax.set_xlabel("compression ratio r")
        ax.grid(alpha=0.3)
    _finish_panels(fig, axes, metric, f"{metric} vs compression ratio ({schedule}, {method})", path)
    return True


def _plot_vs_D(df, metric, schedule, method, colors, path) -> bool:
    """(b) observed metric vs D, one line per r, one panel per format."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    if metric not in sub or sub[metric].notna().sum() == 0:
        return False
    fmts = [f for f in colors if (sub["format"] == f).any()]
    rs = sorted(sub["r"].dropna().unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(fmts), figsize=(4.4 * len(fmts), 3.8), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], fmts):
        means = cell_means(sub[sub["format"] == f], metric, ["r", "D"])
        for i, r in enumerate(rs):
            c = means[means["r"] == r].sort_values("D")
            if len(c):
                ax.errorbar(c["D"], c["y"], yerr=c["se"].fillna(0), fmt="o-", capsize=3, ms=4,
                            color=cmap(i / max(len(rs) - 1, 1)), label=f"r = {r:.2f}")
        ax.set_xscale("log")
        ax.set_xticks(sorted(sub["D"].dropna().unique()), [fmt_int(D) for D in sorted(sub["D"].dropna().unique())])
        ax.minorticks_off()
        ax.set_title(f"format: {f}")
        ax.set_xlabel("D (training examples)")
        ax.grid(alpha=0.3)
    _finish_panels(fig, axes, metric, f"{metric} vs D at each r ({schedule}, {method})", path)
    return True


def _plot_tradeoff(df, fits, schedule, method, colors, path) -> bool:
    """(c) in-domain accuracy vs each general metric, one curve per format ordered by r (observed
    cells and fitted mids), at the collapse D (else the largest D); teacher marked."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    gens, idm = general_metrics(df), f"{IN_DOMAIN}.acc"
    if idm not in df or not gens or sub.empty:
        return False
    fig, axes = plt.subplots(1, len(gens), figsize=(4.8 * len(gens), 4.2), squeeze=False)
    for ax, gm in zip(axes[0], gens):
        Dc = [h.get("D") for g in _fit_groups(fits, schedule=schedule, method=method)
              for k, h in g.get("collapse", {}).items() if k == gm and h.get("D") is not None]
        D = Dc[0] if Dc else sub["D"].max()
        for f, color in colors.items():
            at = sub[(sub["format"] == f) & (sub["D"] == D)]
            c = cell_means(at, gm, ["r"]).merge(cell_means(at, idm, ["r"]), on="r", suffixes=("_g", "_i")).sort_values("r")
            if len(c):
                ax.plot(c["y_g"], c["y_i"], "o-", color=color, ms=4, label=f"{f} observed")
                for _, row in c.iterrows():
                    ax.annotate(f"{row['r']:.2f}", (row["y_g"], row["y_i"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
            for g in _fit_groups(fits, format=f, schedule=schedule, method=method):
                cg, ci = _curve(g["metrics"].get(gm), D), _curve(g["metrics"].get(idm), D)
                if cg and ci:
                    ax.plot(cg["mid"], np.interp(cg["r"], ci["r"], ci["mid"]), "--", color=color, lw=1.2,
                            label=f"{f} fit")
        tg, chg = _metric_levels(df, fits, gm)
        ti, chi = _metric_levels(df, fits, idm)
        if tg is not None and ti is not None:
            ax.plot([tg], [ti], "*", color="black", ms=12, label="teacher")
        if chg is not None:
            ax.axvline(chg, color="grey", ls=":", lw=1, label="chance")
        if chi is not None:
            ax.axhline(chi, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"general: {gm}")
        ax.set_ylabel(f"in-domain: {idm}")
        ax.set_title(f"D = {fmt_int(D)} (labels: r)")
        ax.grid(alpha=0.3)
        _legend(ax, loc="best")
    fig.suptitle(f"In-domain vs general trade-off ({schedule}, {method})")
    _save(fig, path)
    return True


def _plot_collapse(headline: list[dict], path) -> bool:
    """(d) collapse points with intervals: r_general and r_in_domain per group/metric; a point not
    reached within r <= 0.99 is drawn at 1.0 as a triangle."""
    if not headline:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(headline) + 1.6))
    for i, h in enumerate(headline):
        for name, off, color in (("r_general", -0.12, "C3"), ("r_in_domain", 0.12, "C0")):
            v, ci = num(h[name]), h[f"{name}_ci"]
            x = v if v is not None else 1.0
            lo, hi = (num(ci[0]), num(ci[1])) if ci and len(ci) == 2 else (v, v)
            lo, hi = (lo if lo is not None else 1.0), (hi if hi is not None else 1.0)
            label = {"r_general": "general collapse", "r_in_domain": "in-domain drop"}[name]
            ax.errorbar([x], [i + off], xerr=[[max(x - lo, 0)], [max(hi - x, 0)]], fmt="o" if v is not None else ">",
                        color=color, capsize=3, mfc=color if v is not None else "none", label=label)
    ax.axvline(R_LIMIT, color="grey", ls=":", lw=1, label="search limit r = 0.99")
    ax.set_yticks(range(len(headline)))
    ax.set_yticklabels([f"{h['group']}\n{h['metric']} @ D={fmt_int(h['D'])}" for h in headline], fontsize=7)
    ax.set_xlim(0, 1.03)
    ax.set_xlabel("compression ratio r")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Collapse points with intervals (triangle: not reached)")
    _save(fig, path)
    return True


def write_plots(table: pd.DataFrame, fits: dict | None, plot_dir: Path, headline: list[dict]) -> list[tuple[str, str]]:
    """Write every plot; returns [(caption, path relative to the sweep dir)]."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    done = done_rows(table)
    fits_metrics = {m for g in (fits or {}).get("groups", []) for m in g.get("metrics", {})}
    metrics = [f"{s}.acc" for s in suites(table)]
    metrics += sorted(fits_metrics - set(metrics))
    formats = ordered(list(done["format"].unique()) +
                       [g["key"]["format"] for g in (fits or {}).get("groups", []) if "format" in g.get("key", {})],
                       FORMAT_ORDER)
    colors = {f: f"C{i}" for i, f in enumerate(formats)}
    combos = {(s, m) for s, m in zip(done["schedule"], done["method"])}
    combos |= {(g["key"]["schedule"], g["key"]["method"]) for g in (fits or {}).get("groups", [])
               if {"schedule", "method"} <= set(g.get("key", {}))}
    out = []

    def add(ok, caption, name):
        if ok:
            out.append((caption, f"plots/{name}"))

    for s, m in sorted(combos, key=str):
        for metric in metrics:
            name = f"vs_r_{_slug(metric, s, m)}.png"
            add(_plot_vs_r(done, fits, metric, s, m, colors, plot_dir / name), f"{metric} vs r ({s}, {m})", name)
        for metric in metrics:
            name = f"vs_D_{_slug(metric, s, m)}.png"
            add(_plot_vs_D(done, metric, s, m, colors, plot_dir / name), f"{metric} vs D ({s}, {m})", name)
        name = f"tradeoff_{_slug(s, m)}.png"
        add(_plot_tradeoff(done, fits, s, m, colors, plot_dir / name),
            f"in-domain vs general trade-off ({s}, {m})", name)
    add(_plot_collapse(headline, plot_dir / "collapse.png"), "collapse points per format", "collapse.png")
    return out


# ---------------------------------------------------------------------------------------------
# markdown
