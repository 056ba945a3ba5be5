"""Tables and figures from small fixed metrics inputs."""

import math

import pandas as pd
import pytest

from distalign.core.attributes import attribute_of_dataset
from distalign.evaluation.metrics import compute_metrics, noise_floor
from distalign.report.figures import (
    bootstrap_share_ci,
    calibration_figure,
    save,
    share_figure,
    steering_figure,
)
from distalign.report.tables import mae_table, probe_table, to_markdown, write_table

TARGETS = [
    {"context_id": 0, "context": "Nurses", "target": [0.2, 0.8]},
    {"context_id": 1, "context": "Welders", "target": [0.9, 0.1]},
]


def _rows(labels_by_ctx, steering=False):
    rows = []
    for cid, labels in labels_by_ctx.items():
        for lab in labels:
            r = {
                "context_id": cid,
                "context": TARGETS[cid]["context"],
                "target": TARGETS[cid]["target"],
                "label": lab,
            }
            if steering:
                tok = "0" if lab == "male" else "1"
                r.update(steering_token=tok, steering_probs=[0.5, 0.5])
            rows.append(r)
    return rows


@pytest.fixture()
def records(config):
    attr = attribute_of_dataset(config, "uk-real")
    # ours: context 0 -> 2 male / 8 female (exact), context 1 -> 8 male / 1 female / 1 invalid
    ours = compute_metrics(
        _rows({0: ["male"] * 2 + ["female"] * 8, 1: ["male"] * 8 + ["female"] + [None]}, steering=True),
        TARGETS,
        attr,
        seed=0,
        bootstrap=200,
    )
    # zero-shot: everything male
    zs = compute_metrics(_rows({0: ["male"] * 10, 1: ["male"] * 10}), TARGETS, attr, seed=0, bootstrap=200)
    return [
        {"dataset": "uk-real", "model": "m", "method": "ours", "task": "attribute", "metrics": ours},
        {"dataset": "uk-real", "model": "m", "method": "zero-shot", "task": "attribute", "metrics": zs},
    ]


def test_table1_cells(records, config):
    df = mae_table(
        records, config, datasets=["uk-real", "uk-even"], models=["m"], methods=["zero-shot", "ours"]
    )
    zs = df[df.Method == "Zero-shot"].iloc[0]
    ours = df[df.Method == "Ours"].iloc[0]
    # zero-shot: |1-0.2| = 0.8 (per class mean of 0.8, 0.8) and |1-0.9| = 0.1 -> mean 0.45
    assert zs["UK-real"] == pytest.approx(0.45)
    # ours: 0 and |8/9 - 0.9| = 0.0111 -> mean 0.00556; one invalid of 20
    assert ours["UK-real"] == pytest.approx((0 + abs(8 / 9 - 0.9)) / 2)
    assert ours["UK-real invalid"] == pytest.approx(0.05)
    assert math.isnan(ours["UK-even"])  # missing file: empty cell, never 0
    assert math.isnan(ours["Avg"])
    floor = df[df.Method == "Noise floor"].iloc[0]
    assert floor["UK-real"] == pytest.approx(noise_floor([[0.2, 0.8], [0.9, 0.1]], [10, 10], seed=0)["mean"])
    assert list(df.columns[:4]) == ["Model", "Method", "UK-real", "UK-even"]


def test_table10_and_table11_columns(records, config):
    sd = mae_table(records, config, datasets=["uk-real"], models=["m"], methods=["ours"], stat="sd")
    assert sd.iloc[0]["UK-real SD"] == pytest.approx(records[0]["metrics"]["summary"]["mae_sd"])
    ci = mae_table(records, config, datasets=["uk-real"], models=["m"], methods=["ours"], stat="ci")
    row = ci.iloc[0]
    assert row["UK-real CI low"] <= row["UK-real CI high"]
    md = to_markdown(ci)
    assert "[" in md and "95% bootstrap CI" in md


def test_probe_table(config):
    recs = [
        {"dataset": "uk-real", "model": "m", "method": "ours", "probe": {"mae": 0.06}},
        {"dataset": "uk-even", "model": "m", "method": "ours", "probe": {"mae": 0.02}},
    ]
    df = probe_table(recs, config, datasets=["uk-real", "uk-even"], models=["m"], methods=["ours", "ift"])
    assert df.iloc[0]["Avg"] == pytest.approx(0.04)
    assert math.isnan(df.iloc[1]["UK-real"])


def test_markdown_twin_and_csv(tmp_path, records, config):
    df = mae_table(records, config, datasets=["uk-real"], models=["m"], methods=["zero-shot", "ours"])
    write_table(df, tmp_path / "t.csv", tmp_path / "t.md", title="T")
    back = pd.read_csv(tmp_path / "t.csv")
    assert back.loc[0, "UK-real"] == pytest.approx(0.45)
    md = (tmp_path / "t.md").read_text()
    assert "| m | Zero-shot | .450 (0%) |" in md
    assert "Noise floor" in md


def test_figures_render(tmp_path, records, config):
    save(share_figure(records, config, "female", "share"), tmp_path / "f.png", tmp_path / "f.pdf")
    save(steering_figure(records[:1], config, "steer"), tmp_path / "s.png")
    save(calibration_figure(records, config, "female", "cal"), tmp_path / "c.png")
    for name in ("f.png", "f.pdf", "s.png", "c.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_share_ci_brackets_the_share():
    import numpy as np

    lo, hi = bootstrap_share_ci([30, 70], 0, 1, np.random.default_rng(0))
    assert lo < 0.7 < hi and hi - lo < 0.25


def _summary(mae, floor=0.03, invalid=0, total=100):
    return {"summary": {"mae": mae, "noise_floor": floor, "n_invalid": invalid, "n_total": total}}


def test_sweep_points_mean_sd_and_order(tmp_path, config):
    from distalign.report.figures import sweep_figure, sweep_points

    recs = []
    for method, base in (("ift", 0.2), ("ours", 0.05)):
        for knob, values in (("temperature", [1.3, 0.7]), ("top_k", [0, 5]), ("top_p", [0.9])):
            for v in values:
                for rep, delta in enumerate((-0.01, 0.01)):
                    recs.append(
                        {
                            "model": "m",
                            "method": method,
                            "knob": knob,
                            "value": str(v),
                            "rep": rep,
                            "metrics": _summary(base + v / 100 + delta, invalid=rep * 10),
                        }
                    )
    df = sweep_points(recs, config)
    assert len(df) == 2 * 5
    # method order as given, knobs top_p, top_k, temperature, values ascending with top-k "off" last
    first = df[df.method == "IFT"]
    assert list(zip(first.knob, first.value_label, strict=True)) == [
        ("top_p", "0.9"),
        ("top_k", "5"),
        ("top_k", "off"),
        ("temperature", "0.7"),
        ("temperature", "1.3"),
    ]
    row = first.iloc[0]
    assert row.mae_mean == pytest.approx(0.2 + 0.009) and row.mae_sd == pytest.approx(0.01)
    assert (
        row.runs == 2 and row.invalid_rate == pytest.approx(0.05) and row.noise_floor == pytest.approx(0.03)
    )
    save(sweep_figure(recs, config, "sweep"), tmp_path / "s.png", tmp_path / "s.pdf")
    assert (tmp_path / "s.png").stat().st_size > 1000


def _cap(acc, rolling, leaks, **extra):
    """A capabilities JSON with per-item results: ``acc`` 0/1 per question of task "mc", ``rolling``
    (loglikelihood, tokens) per paragraph of task "held", ``leaks`` one leak kind (or None) per request."""
    return {
        "tasks": {"mc": {"acc,none": sum(acc) / len(acc)}, "held": {"word_perplexity,none": 9.9}},
        "items": {
            "mc": [{"doc_id": i, "filter": "none", "acc": float(a)} for i, a in enumerate(acc)],
            "held": [
                {"doc_id": i, "filter": "none", "loglikelihood": ll, "tokens": t, "words": 3}
                for i, (ll, t) in enumerate(rolling)
            ],
        },
        "leak": {
            "share": sum(x is not None for x in leaks) / len(leaks),
            "items": [{"id": f"gi-{i}", "answer": "...", "leak": x} for i, x in enumerate(leaks)],
        },
        **extra,
    }


def test_capabilities_table_pairs_every_row_with_the_base(config):
    from distalign.report.tables import capabilities_table, to_markdown

    base = _cap([1, 1, 0, 0, 1, 0, 1, 1, 0, 1], [(-10.0, 5), (-20.0, 10)], [None, "short", None, None])
    ours = _cap(
        [1, 0, 0, 1, 1, 0, 0, 1, 0, 1],
        [(-12.0, 5), (-21.0, 10)],
        ["steering_token", "short", "class_answer", None],
    )
    recs = [
        {"model": "m", "method": "zero-shot", "capabilities": base},
        {"model": "m", "method": "ours", "capabilities": ours},
    ]
    df = capabilities_table(
        recs, config, models=["m"], methods=["zero-shot", "ift", "ours"], tasks=["mc", "held"]
    )
    assert list(df.columns[:5]) == ["Model", "Method", "mc acc", "held perplexity", "Leak"]
    row = df[df.Method == "Ours"].iloc[0]
    # accuracy: d = [0,-1,0,1,0,0,-1,0,0,0]: mean -.1, plug-in variance .3 - .01 = .29
    half = 1.959964 * math.sqrt(0.29 / 10)
    assert row["mc acc"] == pytest.approx(50.0) and row["Δ mc acc"] == pytest.approx(-10.0)
    assert row["Δ mc acc CI low"] == pytest.approx(100 * (-0.1 - half), abs=1e-3)
    assert row["Δ mc acc CI high"] == pytest.approx(100 * (-0.1 + half), abs=1e-3)
    # perplexity per token: exp(33 / 15) against exp(30 / 15); the change is exp(3 / 15) - 1
    assert row["held perplexity"] == pytest.approx(math.exp(33 / 15))
    assert row["Δ% held perplexity"] == pytest.approx(100 * math.expm1(3 / 15))
    assert row["Δ% held perplexity CI low"] <= row["Δ% held perplexity"] <= row["Δ% held perplexity CI high"]
    # leak: 75% against 25%, d = [1, 0, 1, 0]
    assert row["Leak"] == pytest.approx(75.0) and row["Δ Leak"] == pytest.approx(50.0)
    assert row["Δ Leak CI low"] == pytest.approx(100 * (0.5 - 1.959964 * math.sqrt(0.25 / 4)), abs=1e-3)
    first = df.iloc[0]  # the base against itself: no change, a zero-width interval
    assert first["Δ mc acc"] == first["Δ mc acc CI low"] == first["Δ mc acc CI high"] == 0
    assert math.isnan(df[df.Method == "IFT"].iloc[0]["mc acc"])  # missing: empty, never 0
    md = to_markdown(df)
    assert "| -10.0 [-43.4, +23.4] |" in md and "| 0.0 [0.0, 0.0] |" in md and "paired 95% interval" in md


def test_tradeoff_points_and_figure(config, tmp_path):
    """The Pareto view: each method's MAE / noise floor against its perplexity change from the base."""
    from distalign.report.figures import FIGURE_TABLES, FIGURES, save

    base = _cap([1, 1, 0, 0], [(-10.0, 5), (-20.0, 10)], [None, None])
    ours = _cap([1, 0, 0, 1], [(-12.0, 5), (-21.0, 10)], ["short", None])

    def metrics(mae, floor):
        return {"summary": {"mae": mae, "noise_floor": floor}}

    recs = [
        {
            "dataset": "uk-real",
            "model": "m",
            "method": "zero-shot",
            "metrics": metrics(0.24, 0.03),
            "capabilities": base,
        },
        {
            "dataset": "uk-real",
            "model": "m",
            "method": "ours",
            "metrics": metrics(0.036, 0.03),
            "capabilities": ours,
        },
    ]
    opts = {"title": "t", "tasks": ["mc", "held"], "seed": 0}
    df = FIGURE_TABLES["tradeoff"](recs, config, opts)
    assert df.attrs["x"] == "Δ% held perplexity"
    assert list(df["Method"]) == ["Zero-shot", "Ours"]
    assert df["MAE / floor"].tolist() == pytest.approx([8.0, 1.2])
    assert df.loc[1, "Δ% held perplexity"] == pytest.approx(100 * math.expm1(3 / 15))
    assert df.loc[1, "Δ Leak"] == pytest.approx(50.0)
    fig = FIGURES["tradeoff"](recs, config, opts)
    # room above the highest point (8x) for its label
    assert fig.axes[0].get_ylim() == pytest.approx((0.0, 8.0 * 1.15))
    save(fig, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_capabilities_table_groups_filters_and_old_files(config):
    from distalign.report.tables import capabilities_table

    def lm(acc_a, acc_b, strict, flexible):
        items = {
            "mmlu_a": [{"doc_id": i, "filter": "none", "acc": float(x)} for i, x in enumerate(acc_a)],
            "mmlu_b": [{"doc_id": i, "filter": "none", "acc": float(x)} for i, x in enumerate(acc_b)],
            "gsm8k": [
                {"doc_id": i, "filter": "strict-match", "exact_match": float(x)} for i, x in enumerate(strict)
            ]
            + [
                {"doc_id": i, "filter": "flexible-extract", "exact_match": float(x)}
                for i, x in enumerate(flexible)
            ],
        }
        acc = [*acc_a, *acc_b]
        return {
            "tasks": {
                "mmlu": {"acc,none": sum(acc) / len(acc)},
                "gsm8k": {
                    "exact_match,flexible-extract": 0.9,
                    "exact_match,strict-match": sum(strict) / len(strict),
                },
            },
            "subtasks": {"mmlu": ["mmlu_a", "mmlu_b"], "gsm8k": ["gsm8k"]},
            "items": items,
        }

    recs = [
        {"model": "m", "method": "zero-shot", "capabilities": lm([1, 0], [1, 1], [0, 0], [1, 1])},
        {"model": "m", "method": "ours", "capabilities": lm([1, 1], [0, 1], [1, 0], [0, 0])},
    ]
    df = capabilities_table(
        recs, config, models=["m"], methods=["zero-shot", "ours"], tasks=["mmlu", "gsm8k"]
    )
    row = df.iloc[1]
    assert row["mmlu acc"] == pytest.approx(75.0) and row["Δ mmlu acc"] == pytest.approx(0.0)
    assert (
        row["Δ mmlu acc CI low"] < 0 < row["Δ mmlu acc CI high"]
    )  # pooled over both subtasks: d = [0, 1, -1, 0]
    # gsm8k: the strict-match filter only (its flexible-extract rows went from 1 to 0)
    assert row["gsm8k exact_match"] == pytest.approx(50.0) and row["Δ gsm8k exact_match"] == pytest.approx(
        50.0
    )
    # results written before per-item results were kept: the change of the aggregates, no interval
    old = [
        {"model": "m", "method": "zero-shot", "capabilities": {"tasks": {"mmlu": {"acc,none": 0.60}}}},
        {"model": "m", "method": "ours", "capabilities": {"tasks": {"mmlu": {"acc,none": 0.61}}}},
    ]
    df = capabilities_table(old, config, models=["m"], methods=["zero-shot", "ours"])
    assert df.iloc[1]["Δ mmlu acc"] == pytest.approx(1.0) and "Δ mmlu acc CI low" not in df.columns


def test_steering_diagnosis_table(records, config):
    from distalign.report.tables import steering_diagnosis_table

    df = steering_diagnosis_table(records[:1], config)
    row = df.iloc[0]
    s = records[0]["metrics"]["summary"]
    assert row["Method"] == "Ours" and row["MAE"] == pytest.approx(s["mae"])
    assert row["MAE / floor"] == pytest.approx(s["mae"] / s["noise_floor"])
    # tokens were built from the labels: every valid answer follows its token, calibration |0.5 - target|
    assert row["Consistency"] == pytest.approx(1.0)
    assert row["Calibration"] == pytest.approx((0.3 + 0.4) / 2)
    assert row["Invalid"] == pytest.approx(0.05)
    # the invalid answer of context 1 had a female token: valid tokens 8/9 male against 8/10 of all
    assert row["Invalid skew"] == pytest.approx((0 + abs(8 / 9 - 0.8)) / 2)
    assert row["Task"] == "attribute"
    md = to_markdown(df)
    assert "| m | Ours | UK-real |" in md
    # no answer was both valid and steered: undefined cells are NaN (empty in the Markdown), never None
    import copy

    blank = copy.deepcopy(records[0])
    blank["metrics"]["steering"].update(consistency=None, mae_valid_token_vs_token=None)
    row = steering_diagnosis_table([blank], config).iloc[0]
    assert math.isnan(row["Consistency"]) and math.isnan(row["Invalid skew"])
    # hint reach: on story rows of a method trained on D_story only (ours-story here), from its (dataset, model)
    story = [
        {**r, "task": "story", "method": m} for r, m in ((records[0], "ours-story"), (records[0], "ours"))
    ]
    reach = {("uk-real", "m"): {"mae": 0.19}, ("uk-even", "m"): {"mae": 0.5}}
    df = steering_diagnosis_table([records[0], *story], config, hint_reach=reach)
    assert math.isnan(df.iloc[0]["Hint reach"]) and math.isnan(df.iloc[2]["Hint reach"])
    assert df.iloc[1]["Hint reach"] == pytest.approx(0.19)
    assert "| .190 |" in to_markdown(df)
    assert math.isnan(steering_diagnosis_table(story, config).iloc[0]["Hint reach"])  # no summary given
