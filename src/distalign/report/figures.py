"""The paper's figures (matplotlib, PNG + PDF) from metrics files.

- ``share_figure`` (paper Figure 3 / 11): the share of one class per context, target vs each method.
- ``steering_figure`` (paper Figure 5): mean steering-token probability vs generated frequency per
  context, with the diagonal.
- ``calibration_figure`` (not in the paper): target vs achieved share per context for every
  method, with 95% bootstrap error bars (the context's labels resampled, seeded).
- ``sweep_figure`` (paper Figures 4, 6-10): MAE vs top-p, top-k and temperature, mean over the
  seeded runs with a shaded SD band, one line per method; :func:`sweep_points` is its table.
- ``tradeoff_figure`` (not in the paper): MAE / noise floor against the change in general capability
  (table5's perplexity change, with its paired interval) for every method of table5, so that a
  setting that calibrates by damaging the model shows; :func:`tradeoff_points` is its table.

:data:`FIGURES` maps each ``kind`` of rule ``fig*``/``calibration`` (its ``params.kind``) to the function
that draws it, ``draw(records, config, options)``; ``options`` are the rule's params plus the
``dataset`` wildcard. A figure kind with a table twin (sweep) is in :data:`FIGURE_TABLES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distalign.core.io import atomic_path
from distalign.report.tables import title_of

KNOBS = ("top_p", "top_k", "temperature")


KNOB_TITLES = {"top_p": "top-p", "top_k": "top-k", "temperature": "temperature"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, png_path, pdf_path=None) -> None:
    for path, fmt in ((png_path, "png"), (pdf_path, "pdf")):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    _plt().close(fig)


def share_class_for(share_class, config: dict, dataset: str, classes: Sequence[str]) -> str:
    """The class a record's share is plotted for: ``report.share_class`` resolved for the dataset's attribute
    (a name, or a mapping attribute -> class), else the attribute's first class (calibration panels only:
    fig3/fig11 are checked in config.py and name the class in their title)."""
    from distalign.core.config import share_class_of

    attribute = config["datasets"][dataset]["attribute"]
    chosen = share_class_of({"share_class": share_class}, attribute, config["attributes"][attribute])
    return chosen if chosen in classes else classes[0]


def share_points(metrics: dict, class_name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    k = metrics["classes"].index(class_name)
    ctx = metrics["contexts"]
    return (
        [c["context"] for c in ctx],
        np.array([c["target"][k] for c in ctx]),
        np.array([c["p_hat"][k] if c["n_valid"] else np.nan for c in ctx]),
    )


def share_figure(records: Sequence[dict], config: dict, class_name: str, title: str):
    """Share of ``class_name`` per context: the target and each method (records of one dataset/model)."""
    plt = _plt()
    base = records[0]["metrics"]
    class_name = share_class_for(class_name, config, records[0]["dataset"], base["classes"])
    names, target, _ = share_points(base, class_name)
    order = np.argsort(target, kind="stable")
    fig, ax = plt.subplots(figsize=(max(6, 0.42 * len(names)), 4.2))
    x = np.arange(len(names))
    ax.plot(
        x, target[order], "k-", lw=2.2, label="Target (census)" if base["contexts"] else "Target", zorder=5
    )
    markers = "osD^v<>pP*"
    for i, rec in enumerate(records):
        _, _, share = share_points(rec["metrics"], class_name)
        ax.plot(
            x,
            share[order],
            marker=markers[i % len(markers)],
            ls="--",
            lw=0.9,
            ms=4,
            label=title_of(config, "methods", rec["method"]),
        )
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(f"share of {class_name}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def steering_figure(records: Sequence[dict], config: dict, title: str):
    """Mean steering probability vs generated frequency, every (context, class) point, per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="y = x")
    markers = "osD^v<>"
    for i, rec in enumerate(records):
        st = rec["metrics"].get("steering")
        if not st:
            continue
        xs, ys = [], []
        for c in st["contexts"]:
            xs += list(c["mean_steering_prob"])
            ys += list(c["generated_freq"])
        label = (
            f"{title_of(config, 'methods', rec['method'])} ({rec['dataset']}; "
            f"consistency {st['consistency']:.2f})"
            if st.get("consistency") is not None
            else rec["method"]
        )
        ax.scatter(xs, ys, s=14, marker=markers[i % len(markers)], alpha=0.75, label=label)
    ax.set_xlabel("steering-token probability (mean per context)")
    ax.set_ylabel("generated frequency")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def bootstrap_share_ci(
    counts: Sequence[int], n_invalid: int, k: int, rng: np.random.Generator, resamples: int = 1000
) -> tuple[float, float]:
    """95% percentile CI of a class share in one context, resampling its labels (invalid included)."""
    labels = np.repeat(np.arange(len(counts) + 1), [*counts, n_invalid])
    if labels.size == 0:
        return (np.nan, np.nan)
    draws = rng.choice(labels, size=(resamples, labels.size), replace=True)
    valid = (draws < len(counts)).sum(axis=1)
    share = np.where(valid > 0, (draws == k).sum(axis=1) / np.maximum(valid, 1), np.nan)
    lo, hi = np.nanpercentile(share, [2.5, 97.5])
    return float(lo), float(hi)


def calibration_figure(records: Sequence[dict], config: dict, class_name: str, title: str, seed: int = 0):
    """Target vs achieved share of ``class_name`` per context, one panel per (dataset, method) record."""
    plt = _plt()
    n = len(records)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, rec in zip(axes.ravel(), records, strict=False):
        m = rec["metrics"]
        cname = share_class_for(class_name, config, rec["dataset"], m["classes"])
        k = m["classes"].index(cname)
        xs, ys, lo, hi = [], [], [], []
        for c in m["contexts"]:
            counts = [c["counts"][name] for name in m["classes"]]
            xs.append(c["target"][k])
            ys.append(c["p_hat"][k] if c["n_valid"] else np.nan)
            a, b = bootstrap_share_ci(counts, c["n_invalid"], k, rng)
            lo.append(a)
            hi.append(b)
        xs, ys = np.array(xs), np.array(ys)
        err = np.vstack([np.clip(ys - np.array(lo), 0, None), np.clip(np.array(hi) - ys, 0, None)])
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3, lw=0.8, capsize=1.5)
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        mae = m["summary"]["mae"]
        ax.set_title(
            f"{title_of(config, 'methods', rec['method'])} · {title_of(config, 'datasets', rec['dataset'])}"
            f"\nMAE {mae:.3f}",
            fontsize=8,
        )
        ax.set_xlabel(f"target share of {cname}", fontsize=7)
        ax.set_ylabel("achieved share", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _knob_order(knob: str, value: float) -> float:
    """Plot order of a knob value: top-k 0 means "off" (no truncation), so it goes last."""
    return float("inf") if knob == "top_k" and float(value) == 0 else float(value)


def sweep_points(records: Sequence[dict], config: dict):
    """One row per (model, method, knob, value): mean and population SD of MAE over runs, runs, floor.

    ``records``: dicts with model, method, knob, value, rep and metrics. Rows are ordered by model,
    method (as given), knob (top_p, top_k, temperature) and value (top-k "off" last).
    """
    import pandas as pd

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["method"], r["knob"], float(r["value"])), []).append(r)
    method_rank = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in records))}
    rows = []
    for (model, method, knob, value), recs in groups.items():
        maes = np.array([x["metrics"]["summary"]["mae"] for x in recs], dtype=float)
        floors = [x["metrics"]["summary"]["noise_floor"] for x in recs]
        invalid = [
            x["metrics"]["summary"]["n_invalid"] / max(x["metrics"]["summary"]["n_total"], 1) for x in recs
        ]
        rows.append(
            {
                "model": model,
                "method": title_of(config, "methods", method),
                "_m": method_rank[method],
                "knob": knob,
                "value": int(value) if knob == "top_k" else value,
                "value_label": "off" if knob == "top_k" and value == 0 else f"{value:g}",
                "runs": len(recs),
                "mae_mean": float(maes.mean()),
                "mae_sd": float(maes.std()),
                "invalid_rate": float(np.mean(invalid)),
                "noise_floor": float(np.mean(floors)),
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_k"] = df["knob"].map(KNOBS.index)
    df["_v"] = [_knob_order(k, v) for k, v in zip(df["knob"], df["value"], strict=True)]
    df = df.sort_values(["model", "_m", "_k", "_v"]).drop(columns=["_m", "_k", "_v"]).reset_index(drop=True)
    return df


def sweep_figure(records: Sequence[dict], config: dict, title: str):
    """MAE vs each decoding knob (one panel per knob), mean over runs with a shaded +-SD band."""
    plt = _plt()
    df = sweep_points(records, config)
    knobs = [k for k in KNOBS if k in set(df["knob"])]
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.6 * len(knobs), 3.3), squeeze=False)
    multi_model = df["model"].nunique() > 1
    for ax, knob in zip(axes[0], knobs, strict=True):
        part = df[df["knob"] == knob]
        labels = list(dict.fromkeys(part["value_label"]))
        for (model, method), line in part.groupby(["model", "method"], sort=False):
            x = np.array([labels.index(v) for v in line["value_label"]])
            mean, sd = line["mae_mean"].to_numpy(), line["mae_sd"].to_numpy()
            (h,) = ax.plot(
                x, mean, marker="o", ms=4, lw=1.3, label=f"{method} ({model})" if multi_model else method
            )
            ax.fill_between(x, mean - sd, mean + sd, color=h.get_color(), alpha=0.2, lw=0)
        ax.axhline(float(part["noise_floor"].mean()), color="0.4", ls=":", lw=1, label="noise floor")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_xlabel(KNOB_TITLES[knob])
        ax.set_ylabel("MAE")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def tradeoff_points(records: Sequence[dict], config: dict, tasks: Sequence[str] | None = None, seed: int = 0):
    """The points of :func:`tradeoff_figure`, one row per (model, method) of ``records``.

    ``records``: ``{"dataset", "model", "method", "metrics", "capabilities"}`` of table5's rows (the
    attribute task's metrics on capabilities.dataset), the model's base row first. Columns: ``Model``,
    ``Method``, ``MAE``, ``Noise floor``, ``MAE / floor``, and table5's columns of the row
    (:func:`distalign.report.tables.capabilities_table`); ``x`` names the change on the x axis: the
    first rolling log-likelihood task's ``Δ% ... perplexity``, else the first task's ``Δ``."""
    import pandas as pd

    from distalign.report.tables import capabilities_table

    models = list(dict.fromkeys(r["model"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    caps = capabilities_table(records, config, models=models, methods=methods, tasks=tasks, seed=seed)
    idx = {(r["model"], r["method"]): r for r in records}
    keys = [(model, method) for model in models for method in methods]  # capabilities_table's row order
    rows = []
    for (model, method), (_, cap_row) in zip(keys, caps.iterrows(), strict=True):
        r = idx.get((model, method))
        if r is None:
            continue
        s = r["metrics"]["summary"]
        floor = s.get("noise_floor")
        rows.append(
            {
                "Model": model,
                "Method": cap_row["Method"],
                "MAE": s["mae"],
                "Noise floor": floor,
                "MAE / floor": s["mae"] / floor if floor else np.nan,
                **{k: v for k, v in cap_row.items() if k not in ("Model", "Method")},
            }
        )
    df = pd.DataFrame(rows)
    changes = [c for c in caps.columns if c.startswith("Δ% ") and not c.endswith(("CI low", "CI high"))]
    changes = changes or [
        c for c in caps.columns if c.startswith("Δ ") and not c.endswith(("CI low", "CI high"))
    ]
    df.attrs["x"] = changes[0] if changes else None
    return df


def tradeoff_figure(records: Sequence[dict], config: dict, title: str, tasks=None, seed: int = 0):
    """MAE / noise floor (y) against the capability change of table5 (x, with its paired 95% interval),
    one point per method; dashed lines at the noise floor (1x), at 1.25x and, for a perplexity change,
    at +5% (issue 24's targets)."""
    plt = _plt()
    df = tradeoff_points(records, config, tasks, seed)
    x = df.attrs["x"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if x is None or df.empty:
        ax.text(0.5, 0.5, "no capability change to plot", ha="center", va="center", transform=ax.transAxes)
        return fig
    for model, part in df.groupby("Model", sort=False):
        err = None
        if f"{x} CI low" in part.columns:
            err = np.vstack([part[x] - part[f"{x} CI low"], part[f"{x} CI high"] - part[x]]).clip(min=0)
        ax.errorbar(
            part[x],
            part["MAE / floor"],
            xerr=err,
            fmt="o",
            capsize=3,
            label=model if df["Model"].nunique() > 1 else None,
        )
        for _, r in part.iterrows():
            ax.annotate(
                r["Method"], (r[x], r["MAE / floor"]), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(1.25, color="grey", lw=0.8, ls="--")
    if x.startswith("Δ% "):
        ax.axvline(5.0, color="grey", lw=0.8, ls="--")
    ax.axvline(0.0, color="grey", lw=0.6)
    ax.set_xlabel(x + (" (% of the base model)" if x.startswith("Δ% ") else " (points)"))
    ax.set_ylabel("MAE / noise floor")
    # headroom above the highest point for its label, and the 1.25x line always in view
    top = np.nanmax(df["MAE / floor"].to_numpy(dtype=float), initial=1.25)
    ax.set_ylim(0, max(1.4, 1.15 * top))
    ax.grid(alpha=0.3)
    if df["Model"].nunique() > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[Sequence[dict], dict, Mapping], object]] = {
    "share": lambda records, config, o: share_figure(records, config, o["share_class"], o["title"]),
    "sweep": lambda records, config, o: sweep_figure(records, config, f"{o['title']}: {o['dataset']}"),
    "steering": lambda records, config, o: steering_figure(records, config, o["title"]),
    "calibration": lambda records, config, o: calibration_figure(
        records, config, o["share_class"], o["title"], seed=o["seed"]
    ),
    "tradeoff": lambda records, config, o: tradeoff_figure(
        records, config, o["title"], o.get("tasks"), o.get("seed") or 0
    ),
}


# Figure kinds that also write a CSV of their points (``output.csv``): ``table(records, config, options)``.
FIGURE_TABLES: dict[str, Callable[..., object]] = {
    "sweep": lambda records, config, o: sweep_points(records, config),
    "tradeoff": lambda records, config, o: tradeoff_points(
        records, config, o.get("tasks"), o.get("seed") or 0
    ),
}


def figure_kind(kind: str) -> Callable[[Sequence[dict], dict, Mapping], object]:
    """The drawing function of ``kind``; an unknown kind names the known ones."""
    try:
        return FIGURES[kind]
    except KeyError:
        raise ValueError(
            f"figure kind {kind!r} is not one of {sorted(FIGURES)} (distalign.report.figures.FIGURES)"
        ) from None
