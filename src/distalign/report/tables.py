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


# The per-item metric table5 shows for a task, in this order of preference (lm-eval metric names).
CAPABILITY_METRICS = ("acc", "exact_match", "prompt_level_strict_acc", "acc_norm", "mc2")


def _main_metric(metrics: Mapping) -> tuple[str, str] | None:
    """(result key, metric name) of the metric table5 shows for a task's lm-eval results, e.g.
    ("exact_match,strict-match", "exact_match"); None when it has none of CAPABILITY_METRICS. Of a
    metric's filters, "none" (the only one of most tasks) comes first, then "strict-match" (gsm8k's
    exact answer format), then the rest in name order."""
    order = {"none": 0, "strict-match": 1}
    for name in CAPABILITY_METRICS:
        keys = [k for k in metrics if k.split(",")[0] == name]
        if keys:
            filt = lambda k: k.split(",", 1)[1] if "," in k else "none"  # noqa: E731
            return min(keys, key=lambda k: (order.get(filt(k), 2), filt(k))), name
    return None


def _task_items(cap: Mapping, task: str) -> dict[tuple, dict]:
    """Per-item results of a configured task (all subtasks of a group), keyed by (subtask, filter, doc)."""
    items = cap.get("items") or {}
    subtasks = (cap.get("subtasks") or {}).get(task) or [task]
    return {
        (sub, it.get("filter", "none"), it["doc_id"]): it for sub in subtasks for it in items.get(sub) or []
    }


def _paired(base_items: dict, items: dict, field: str, filter_name: str | None) -> tuple[list, list]:
    """Values of ``field`` on the items both runs scored (same subtask, filter and document)."""
    keys = sorted(
        k
        for k in base_items.keys() & items.keys()
        if (filter_name is None or k[1] == filter_name) and field in items[k] and field in base_items[k]
    )
    return [base_items[k][field] for k in keys], [items[k][field] for k in keys]


def _capability_cells(cap: Mapping, base: Mapping | None, task: str, seed: int) -> dict:
    """table5 cells of one task for one row: its score and the change from ``base`` with a paired 95%
    interval (columns ``X``, ``Δ X``, ``Δ X CI low``, ``Δ X CI high``)."""
    from distalign.evaluation.capability_stats import paired_mean_change, paired_perplexity_change

    metrics = (cap.get("tasks") or {}).get(task)
    if metrics is None:
        return {}
    items = _task_items(cap, task)
    base_items = _task_items(base, task) if base is not None else {}
    rolling = [it for it in items.values() if "loglikelihood" in it and "tokens" in it]
    if rolling:  # a rolling log-likelihood task: token perplexity, change in % of the base's
        label = f"{task} perplexity"
        nll = sum(-it["loglikelihood"] for it in rolling)
        cells = {label: math.exp(nll / sum(it["tokens"] for it in rolling))}
        b, o = _paired(base_items, items, "loglikelihood", None)
        if b:
            t, _ = _paired(base_items, items, "tokens", None)
            c = paired_perplexity_change([-x for x in b], [-x for x in o], t, seed=seed)
            cells.update(
                {f"Δ% {label}": c["change"], f"Δ% {label} CI low": c["low"], f"Δ% {label} CI high": c["high"]}
            )
        return cells
    main = _main_metric(metrics)
    if main is None:
        return {}
    key, name = main
    label = f"{task} {name}"
    cells = {label: 100 * metrics[key]}
    filter_name = key.split(",", 1)[1] if "," in key else "none"
    b, o = _paired(base_items, items, name, filter_name)
    if b:
        c = paired_mean_change(b, o)
        cells.update(
            {f"Δ {label}": c["delta"], f"Δ {label} CI low": c["low"], f"Δ {label} CI high": c["high"]}
        )
    elif base is not None and key in (base.get("tasks") or {}).get(task, {}):
        cells[f"Δ {label}"] = 100 * (metrics[key] - base["tasks"][task][key])
    return cells


def _leak_cells(cap: Mapping, base: Mapping | None) -> dict:
    """The leak column (percent of ordinary requests answered with a leak) and its paired change."""
    from distalign.evaluation.capability_stats import paired_mean_change

    leak = cap.get("leak")
    if not leak:
        return {}
    cells = {"Leak": 100 * leak["share"]}
    if base is not None and base.get("leak"):
        mine = {it["id"]: float(it["leak"] is not None) for it in leak["items"]}
        theirs = {it["id"]: float(it["leak"] is not None) for it in base["leak"]["items"]}
        ids = sorted(mine.keys() & theirs.keys())
        if ids:
            c = paired_mean_change([theirs[i] for i in ids], [mine[i] for i in ids])
            cells.update({"Δ Leak": c["delta"], "Δ Leak CI low": c["low"], "Δ Leak CI high": c["high"]})
    return cells


def capabilities_table(
    records: Sequence[dict],
    config: dict,
    *,
    models: Sequence[str],
    methods: Sequence[str],
    tasks: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """table5: general capabilities per (model, method), each paired with the model's first method
    (the base model: zero-shot) on the same items.

    ``records``: ``{"model", "method", "capabilities": <capabilities JSON>}`` (lm-eval results with
    per-item results, :func:`distalign.evaluation.capabilities.evaluate_lm_eval`). Per configured
    lm-eval task (``tasks``; default: every task of the records): a multiple-choice or generation
    task shows its main metric in points (``<task> acc``, ``<task> exact_match``, ...) and ``Δ``, its
    change from the base row, with a paired 95% interval on the per-item differences; a rolling
    log-likelihood task shows token perplexity (``<task> perplexity``) and ``Δ%``, its relative
    change in percent, with a paired bootstrap interval over documents (``seed``). ``Leak``: percent
    of ordinary requests whose answer leaks the attribute task (a steering token first, a bare class
    word, or too short), with its paired change. CSV columns ``... CI low`` / ``... CI high`` hold the
    interval; the Markdown twin folds it into the cell. The base row's own changes are 0 [0, 0].
    """
    idx = {(r["model"], r["method"]): r["capabilities"] for r in records}
    rows = []
    for model in models:
        base = next((idx[(model, m)] for m in methods if (model, m) in idx), None)
        for method in methods:
            cap = idx.get((model, method))
            row = {"Model": model, "Method": title_of(config, "methods", method)}
            if cap is not None:
                names = tasks if tasks is not None else sorted(cap.get("tasks") or {})
                for task in names:
                    row.update(_capability_cells(cap, base, task, seed))
                row.update(_leak_cells(cap, base))
            rows.append(row)
    df = pd.DataFrame(rows)
    scores = [c for c in df.columns if c not in ("Model", "Method") and not c.startswith(("Δ ", "Δ% "))]
    cols = ["Model", "Method", *scores]
    for c in scores:
        for prefix in ("Δ ", "Δ% "):
            cols += [
                x for x in (f"{prefix}{c}", f"{prefix}{c} CI low", f"{prefix}{c} CI high") if x in df.columns
            ]
    df = df.reindex(columns=cols)
    df.attrs["md_digits"] = 1
    df.attrs["md_signed"] = ("Δ ", "Δ% ")
    df.attrs["md_note"] = (
        "Points (percent) for accuracies and the leak share; Δ = change from the first row (the base "
        "model) on the same items, Δ% = relative change of perplexity in percent; [a, b] = paired 95% "
        "interval (per-item differences; perplexity: paired bootstrap over documents)."
    )
    return df


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


def _fmt(v, digits=3, signed: bool = False, lead_zero: bool = False) -> str:
    """A cell: MAE-style ".093" (no leading zero); with ``lead_zero`` "0.5", and "+1.2" when ``signed``
    (table5's points and percents)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int | np.integer):
        return str(v)
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    if s in (f"+{0:.{digits}f}", f"-{0:.{digits}f}"):
        s = s[1:]  # no sign on a zero
    return s[1:] if not lead_zero and s.startswith("0.") else s


def to_markdown(df: pd.DataFrame) -> str:
    """A readable twin: MAE cells as .093, with ± SD, [CI] and (invalid %) folded into the cell."""
    digits = df.attrs.get("md_digits", 3)
    signed = tuple(df.attrs.get("md_signed", ()))  # column prefixes whose numbers carry a sign
    lead_zero = bool(signed)  # a table of signed points writes 0.0, not .0
    lead = [c for c in ("Model", "Method") if c in df.columns]
    value_cols = [
        c for c in df.columns if c not in lead and not c.endswith((" SD", " CI low", " CI high", " invalid"))
    ]
    lines = ["| " + " | ".join([*lead, *value_cols]) + " |", "|" + "---|" * (len(value_cols) + len(lead))]
    for _, r in df.iterrows():
        cells = [str(r[c]) for c in lead]
        for c in value_cols:
            sign = bool(signed) and c.startswith(signed)
            cell = _fmt(r[c], digits, sign, lead_zero)
            if f"{c} SD" in df.columns and not pd.isna(r.get(f"{c} SD")):
                cell += f" ± {_fmt(r[f'{c} SD'])}"
            if f"{c} CI low" in df.columns and not pd.isna(r.get(f"{c} CI low")):
                low, high = (_fmt(r[f"{c} CI {e}"], digits, sign, lead_zero) for e in ("low", "high"))
                cell += f" [{low}, {high}]"
            if f"{c} invalid" in df.columns and not pd.isna(r.get(f"{c} invalid")):
                cell += f" ({100 * r[f'{c} invalid']:.0f}%)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    note = ""
    if any(c.endswith(" invalid") for c in df.columns):
        note = "\n(x%) = share of invalid (unparseable) answers, left out of the MAE. "
    if any(c.endswith(" SD") for c in df.columns):
        note += "± = SD across contexts. "
    if "md_note" in df.attrs:
        note += df.attrs["md_note"]
    elif any(c.endswith(" CI low") for c in df.columns):
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
            records,
            config,
            models=o["models"],
            methods=o["methods"],
            tasks=o.get("tasks"),
            seed=o.get("seed") or 0,
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
