"""The paper's tables from metrics and probe files (one function per table family).

Every MAE table has one row per (model, method), one column per dataset plus the average, and
- a **noise-floor row** per model: the expected MAE of an ideal sampler that draws the same
  number of answers per context (N, invalid ones included) exactly from the target, and
- the **invalid-response rate** of every cell (CSV columns ``<dataset> invalid``; in the Markdown
  twin as a percentage next to the MAE).
A cell whose metrics file is missing is empty (NaN), never zero.

Inputs are *records*: ``{"dataset", "model", "method", "task", "metrics": <metrics JSON>}`` (or
``"probe": <probe JSON>`` for table4). Titles come from config (``datasets.<d>.title``,
``methods.<m>.title``); :func:`report_config` is the part of the config tables and figures read.

:data:`TABLES` maps each ``kind`` of rule ``table*`` (its ``params.kind``) to a :class:`TableKind`:
which input list it reads, under which record field, and the function that builds it. A new table
is one entry there, not a branch in the script.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from distalign.core.config import TRAINED_KINDS
from distalign.core.io import atomic_path
from distalign.evaluation.metrics import noise_floor

AVG = "Avg"


def title_of(config: dict, section: str, name: str) -> str:
    return (config[section].get(name) or {}).get("title") or name


def _index(records: Sequence[dict]) -> dict:
    return {(r["dataset"], r["model"], r["method"], r.get("task", "attribute")): r for r in records}


def _floor(metrics: dict) -> float:
    ctx = metrics["contexts"]
    return noise_floor([c["target"] for c in ctx], [c["n_total"] for c in ctx], seed=0)["mean"]


def mae_table(
    records: Sequence[dict],
    config: dict,
    *,
    datasets: Sequence[str],
    models: Sequence[str],
    methods: Sequence[str],
    task: str = "attribute",
    stat: str = "mae",
) -> pd.DataFrame:
    """MAE table. ``stat``: "mae" (table1/2/3/6), "sd" (table10: mean and SD), "ci" (table11: mean and CI)."""
    idx = _index(records)
    titles = [title_of(config, "datasets", d) for d in datasets]
    rows = []
    for model in models:
        floors: dict[str, float] = {}
        for method in methods:
            if not has_row(config, model, method):
                continue
            row = {"Model": model, "Method": title_of(config, "methods", method)}
            vals = []
            for d, t in zip(datasets, titles, strict=True):
                rec = idx.get((d, model, method, task))
                s = rec["metrics"]["summary"] if rec else {}
                v = s.get("mae", math.nan) if rec else math.nan
                row[t] = v
                vals.append(v)
                if stat == "sd":
                    row[f"{t} SD"] = s.get("mae_sd", math.nan) if rec else math.nan
                if stat == "ci":
                    row[f"{t} CI low"] = s.get("mae_ci_low", math.nan) if rec else math.nan
                    row[f"{t} CI high"] = s.get("mae_ci_high", math.nan) if rec else math.nan
                row[f"{t} invalid"] = s.get("invalid_rate", math.nan) if rec else math.nan
                if rec and d not in floors:
                    floors[d] = _floor(rec["metrics"])
            row[AVG] = sum(vals) / len(vals) if vals and not any(math.isnan(v) for v in vals) else math.nan
            rows.append(row)
        floor_row = {"Model": model, "Method": "Noise floor"}
        fvals = []
        for d, t in zip(datasets, titles, strict=True):
            floor_row[t] = floors.get(d, math.nan)
            fvals.append(floor_row[t])
        floor_row[AVG] = (
            sum(fvals) / len(fvals) if fvals and not any(math.isnan(v) for v in fvals) else math.nan
        )
        rows.append(floor_row)
    cols = ["Model", "Method"]
    for t in titles:
        cols.append(t)
        if stat == "sd":
            cols.append(f"{t} SD")
        if stat == "ci":
            cols += [f"{t} CI low", f"{t} CI high"]
    cols.append(AVG)
    cols += [f"{t} invalid" for t in titles]
    return pd.DataFrame(rows).reindex(columns=cols)


def probe_table(
    records: Sequence[dict],
    config: dict,
    *,
    datasets: Sequence[str],
    models: Sequence[str],
    methods: Sequence[str],
) -> pd.DataFrame:
    """table4: MAE of the class-token probabilities at the first answer position (no sampling)."""
    idx = {(r["dataset"], r["model"], r["method"]): r for r in records}
    titles = [title_of(config, "datasets", d) for d in datasets]
    rows = []
    for model in models:
        for method in methods:
            row = {"Model": model, "Method": title_of(config, "methods", method)}
            vals = []
            for d, t in zip(datasets, titles, strict=True):
                rec = idx.get((d, model, method))
                row[t] = rec["probe"]["mae"] if rec else math.nan
                vals.append(row[t])
            row[AVG] = sum(vals) / len(vals) if vals and not any(math.isnan(v) for v in vals) else math.nan
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["Model", "Method", *titles, AVG])


def capabilities_table(
    records: Sequence[dict], config: dict, *, models: Sequence[str], methods: Sequence[str]
) -> pd.DataFrame:
    """table5: general capabilities per (model, method) and the change from the model's zero-shot row.

    ``records``: ``{"model", "method", "capabilities": <capabilities JSON>}``. Local backend columns:
    ``Perplexity`` (held-out text, lower is better) and ``MC accuracy``; lm-eval backend: one
    column per task (its first accuracy-like metric, in points). ``Δ`` columns: minus the
    first method's value (the base model) of the same model.
    """
    idx = {(r["model"], r["method"]): r["capabilities"] for r in records}
    rows = []
    for model in models:
        first = None
        for method in methods:
            cap = idx.get((model, method))
            row = {"Model": model, "Method": title_of(config, "methods", method)}
            if cap is None:
                pass
            elif cap["backend"] == "local":
                row["Perplexity"] = cap["perplexity"]["perplexity"]
                row["MC accuracy"] = 100 * cap["multiple_choice"]["accuracy"]
            else:
                for task, metrics in sorted(cap["tasks"].items()):
                    keys = [
                        k
                        for k in metrics
                        if k.split(",")[0]
                        in ("acc", "exact_match", "prompt_level_strict_acc", "acc_norm", "mc2")
                    ]
                    if keys:
                        row[task] = 100 * metrics[keys[0]]
            values = {k: v for k, v in row.items() if k not in ("Model", "Method")}
            if first is None and values:
                first = values
            for k, v in values.items():
                if first is not None and k in first:
                    row[f"Δ {k}"] = v - first[k]
            rows.append(row)
    df = pd.DataFrame(rows)
    metric_cols = [c for c in df.columns if c not in ("Model", "Method") and not c.startswith("Δ ")]
    return df.reindex(columns=["Model", "Method", *metric_cols, *[f"Δ {c}" for c in metric_cols]])


def steering_diagnosis_table(
    records: Sequence[dict], config: dict, hint_reach: dict[tuple, dict | None] | None = None
) -> pd.DataFrame:
    """What limits a steering method, per (dataset, model, method) record (not in the paper).

    The answer MAE of a steering method decomposes into three causes: the token distribution
    itself (``Calibration``: MAE of the mean steering probability vs the target, i.e. the
    restricted internal probe; ``Token MAE``: of the sampled tokens' frequencies), answers that do
    not follow their token (``Consistency``: share of valid answers naming the token's class;
    ``Answer vs token``: MAE between generated and token frequencies) and ``Invalid`` answers;
    ``Invalid skew`` is the part of the invalid answers that biases the valid ones: MAE between the
    token frequencies of all answers and of the valid answers (0 when invalidity ignores the token).
    One row per record, so story-task records (``Task`` story) sit beside the attribute task.
    ``Hint reach`` (story rows of a method trained on D_story; ``hint_reach`` maps (dataset, model)
    to the D_story summary's ``hint_reach``): the lowest MAE a mixture of the base model's hinted
    story prompts reaches, a fourth cause: what the base model writes when told outright.
    """
    hint_reach = hint_reach or {}
    rows = []
    for r in records:
        m = r["metrics"]
        s, st = m["summary"], m.get("steering") or {}
        floor = s.get("noise_floor")
        reach = None
        if r.get("task", "attribute") == "story" and config["methods"].get(r["method"], {}).get("story_data"):
            reach = (hint_reach.get((r["dataset"], r["model"])) or {}).get("mae")
        rows.append(
            {
                "Dataset": title_of(config, "datasets", r["dataset"]),
                "Task": r.get("task", "attribute"),
                "Model": r["model"],
                "Method": title_of(config, "methods", r["method"]),
                "MAE": s["mae"],
                "Noise floor": floor,
                "MAE / floor": s["mae"] / floor if floor else math.nan,
                "Calibration": st.get("mae_prob_vs_target", math.nan),
                "Token MAE": st.get("mae_token_vs_target", math.nan),
                "Consistency": _nan_if_none(st.get("consistency")),
                "Answer vs token": st.get("mae_generated_vs_token", math.nan),
                "Invalid": s.get("invalid_rate", math.nan),
                "Invalid skew": _nan_if_none(st.get("mae_valid_token_vs_token")),
                "Hint reach": _nan_if_none(reach),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "Dataset",
            "Task",
            "Model",
            "Method",
            "MAE",
            "Noise floor",
            "MAE / floor",
            "Calibration",
            "Token MAE",
            "Consistency",
            "Answer vs token",
            "Invalid",
            "Invalid skew",
            "Hint reach",
        ],
    )


def judge_check_table(records: Sequence[dict], config: dict) -> pd.DataFrame:
    """One row per judge check (``records``: ``dataset`` and ``check``, the judge_check rule's JSON).

    Shares and recalls are per class in the attribute's class order, written ``a / b / c``; "No class"
    counts the stories the reader gave no class, "judged a class" those of them the judge did not
    leave invalid.
    """
    rows = []
    for r in records:
        c = r["check"]
        names = c["classes"]

        def per_class(values, names=names, digits=2):
            return " / ".join(_fmt(None if values[n] is None else float(values[n]), digits) for n in names)

        mixes = c.get("reach_mixes") or []
        same = bool(mixes) and all(m == mixes[0] for m in mixes)
        mix = per_class(dict(zip(names, mixes[0], strict=True))) if same else "per context"
        low, high = c["faithful_mae_ci"]
        unclassed = c.get("unclassed") or [0]
        rows.append(
            {
                "Dataset": title_of(config, "datasets", r["dataset"]),
                "Judge": c["judge"],
                "Classes": " / ".join(names),
                "Stories": c["n_stories"],
                "No class": int(sum(unclassed)),
                "No class, judged a class": int(sum(unclassed[:-1])),
                "Reader's shares": per_class(c["reader_shares"]),
                "Judge's shares": per_class(c["judge_shares"]),
                "Agreement": c["agreement"],
                "Kappa": _nan_if_none(c["kappa"]),
                "Recall": per_class(c["recall"]),
                "Faithful MAE": c["faithful_mae"],
                "Faithful MAE CI low": _nan_if_none(low),
                "Faithful MAE CI high": _nan_if_none(high),
                "Judge reach": c["judge_reach"],
                "Reach mix": mix,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "Dataset",
            "Judge",
            "Classes",
            "Stories",
            "No class",
            "No class, judged a class",
            "Reader's shares",
            "Judge's shares",
            "Agreement",
            "Kappa",
            "Recall",
            "Faithful MAE",
            "Faithful MAE CI low",
            "Faithful MAE CI high",
            "Judge reach",
            "Reach mix",
        ],
    )


def _nan_if_none(value) -> float:
    return math.nan if value is None else value


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int | np.integer):
        return str(v)
    s = f"{v:.{digits}f}"
    return s[1:] if s.startswith("0.") else s


def to_markdown(df: pd.DataFrame) -> str:
    """A readable twin: MAE cells as .093, with ± SD, [CI] and (invalid %) folded into the cell."""
    lead = [c for c in ("Model", "Method") if c in df.columns]
    value_cols = [
        c for c in df.columns if c not in lead and not c.endswith((" SD", " CI low", " CI high", " invalid"))
    ]
    lines = ["| " + " | ".join([*lead, *value_cols]) + " |", "|" + "---|" * (len(value_cols) + len(lead))]
    for _, r in df.iterrows():
        cells = [str(r[c]) for c in lead]
        for c in value_cols:
            cell = _fmt(r[c])
            if f"{c} SD" in df.columns and not pd.isna(r.get(f"{c} SD")):
                cell += f" ± {_fmt(r[f'{c} SD'])}"
            if f"{c} CI low" in df.columns and not pd.isna(r.get(f"{c} CI low")):
                cell += f" [{_fmt(r[f'{c} CI low'])}, {_fmt(r[f'{c} CI high'])}]"
            if f"{c} invalid" in df.columns and not pd.isna(r.get(f"{c} invalid")):
                cell += f" ({100 * r[f'{c} invalid']:.0f}%)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    note = ""
    if any(c.endswith(" invalid") for c in df.columns):
        note = "\n(x%) = share of invalid (unparseable) answers, left out of the MAE. "
    if any(c.endswith(" SD") for c in df.columns):
        note += "± = SD across contexts. "
    if any(c.endswith(" CI low") for c in df.columns):
        note += "[a, b] = 95% bootstrap CI. "
    return "\n".join(lines) + "\n" + (note.strip() + "\n" if note else "")


def write_table(df: pd.DataFrame, csv_path, md_path, title: str = "") -> None:
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text((f"# {title}\n\n" if title else "") + to_markdown(df), encoding="utf-8")


def report_config(config: Mapping) -> dict:
    """The part of the config the tables and figures read (titles, story_data flags, attributes for
    share classes, the run's models as a fallback row order): what a report rule passes as a param
    instead of the whole config, so a change elsewhere in the config does not rerun the report."""
    out = {
        "datasets": dict(config["datasets"]),
        "methods": dict(config["methods"]),
        "attributes": dict(config["attributes"]),
        "run": {"models": list(config["run"]["models"])},
    }
    api_models = [m for m in config["run"]["models"] if config["models"][m]["source"] == "openai"]
    if api_models:  # only when there are some: a run without them keeps its params (and its tables)
        out["api_models"] = api_models
    return out


def has_row(config: Mapping, model: str, method: str) -> bool:
    """Whether a table shows (model, method): an API model has no row for a method that needs weights."""
    return model not in config.get("api_models", ()) or config["methods"][method]["kind"] not in TRAINED_KINDS


@dataclass(frozen=True)
class TableKind:
    """One kind of table: the rule's input list (``snakemake.input[inputs]``), the record field its
    files go under, and ``build(records, config, options)``. ``options`` are the rule's params
    (``datasets``, ``models``, ``methods``, ``task``) plus what the script read besides the records
    (``hint_reach`` of steering_diagnosis)."""

    inputs: str
    field: str
    build: Callable[[Sequence[dict], dict, Mapping], pd.DataFrame]


def _mae_kind(stat: str) -> TableKind:
    return TableKind(
        "metrics",
        "metrics",
        lambda records, config, o: mae_table(
            records,
            config,
            datasets=o["datasets"],
            models=o["models"],
            methods=o["methods"],
            task=o.get("task", "attribute"),
            stat=stat,
        ),
    )


TABLES: dict[str, TableKind] = {
    "mae": _mae_kind("mae"),
    "sd": _mae_kind("sd"),
    "ci": _mae_kind("ci"),
    "probe": TableKind(
        "probes",
        "probe",
        lambda records, config, o: probe_table(
            records, config, datasets=o["datasets"], models=o["models"], methods=o["methods"]
        ),
    ),
    "capabilities": TableKind(
        "capabilities",
        "capabilities",
        lambda records, config, o: capabilities_table(
            records, config, models=o["models"], methods=o["methods"]
        ),
    ),
    "steering_diagnosis": TableKind(
        "metrics",
        "metrics",
        lambda records, config, o: steering_diagnosis_table(records, config, hint_reach=o.get("hint_reach")),
    ),
    "judge_check": TableKind(
        "checks", "check", lambda records, config, o: judge_check_table(records, config)
    ),
}


def table_kind(kind: str) -> TableKind:
    """The registry entry of ``kind``; an unknown kind names the known ones."""
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(
            f"table kind {kind!r} is not one of {sorted(TABLES)} (distalign.report.tables.TABLES)"
        ) from None


def table_models(record_keys: Sequence[Mapping], config: Mapping) -> list[str]:
    """Row order of the models: as the records name them, else the run's models (tables without a model
    key, e.g. judge_check)."""
    return list(dict.fromkeys(k["model"] for k in record_keys if "model" in k)) or list(
        config["run"]["models"]
    )
