"""The name -> function registries of the report scripts (tables.TABLES, figures.FIGURES) and the
config part they read (tables.report_config)."""

import re
from pathlib import Path

import pandas as pd
import pytest

from distalign.core.attributes import attribute_of_dataset
from distalign.evaluation.metrics import compute_metrics
from distalign.report.figures import FIGURE_TABLES, FIGURES, figure_kind, save
from distalign.report.tables import TABLES, mae_table, report_config, table_kind, table_models

REPO = Path(__file__).resolve().parents[1]
TARGETS = [
    {"context_id": 0, "context": "Nurses", "target": [0.2, 0.8]},
    {"context_id": 1, "context": "Welders", "target": [0.9, 0.1]},
]


@pytest.fixture()
def records(config):
    attr = attribute_of_dataset(config, "uk-real")

    def rows(labels, steering):
        return [
            {
                "context_id": cid,
                "context": TARGETS[cid]["context"],
                "target": TARGETS[cid]["target"],
                "label": lab,
                **(
                    {"steering_token": "0" if lab == "male" else "1", "steering_probs": [0.5, 0.5]}
                    if steering
                    else {}
                ),
            }
            for cid, labs in labels.items()
            for lab in labs
        ]

    ours = compute_metrics(
        rows({0: ["male"] * 2 + ["female"] * 8, 1: ["male"] * 9 + [None]}, True),
        TARGETS,
        attr,
        seed=0,
        bootstrap=100,
    )
    zs = compute_metrics(
        rows({0: ["male"] * 10, 1: ["male"] * 10}, False), TARGETS, attr, seed=0, bootstrap=100
    )
    return [
        {"dataset": "uk-real", "model": "m", "method": "ours", "task": "attribute", "metrics": ours},
        {"dataset": "uk-real", "model": "m", "method": "zero-shot", "task": "attribute", "metrics": zs},
    ]


def test_every_kind_the_rules_name_is_registered():
    kinds = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        kinds |= set(re.findall(r'\bkind="(\w+)"', smk.read_text()))
    assert kinds, "no kind= params found in the rules"
    assert kinds <= set(TABLES) | set(FIGURES), kinds - set(TABLES) - set(FIGURES)


def test_unknown_kinds_name_the_known_ones():
    with pytest.raises(ValueError, match=r"table kind 'median' is not one of \['capabilities'"):
        table_kind("median")
    with pytest.raises(ValueError, match="figure kind 'pie' is not one of"):
        figure_kind("pie")


@pytest.mark.parametrize("stat", ["mae", "sd", "ci"])
def test_mae_kinds_build_the_mae_table_with_their_stat(records, config, stat):
    opts = {"datasets": ["uk-real"], "models": ["m"], "methods": ["zero-shot", "ours"], "task": "attribute"}
    kind = table_kind(stat)
    assert (kind.inputs, kind.field) == ("metrics", "metrics")
    got = kind.build(records, config, opts)
    want = mae_table(
        records, config, datasets=["uk-real"], models=["m"], methods=["zero-shot", "ours"], stat=stat
    )
    pd.testing.assert_frame_equal(got, want)
    assert ("UK-real SD" in got.columns) == (stat == "sd")


def test_report_config_is_enough_for_every_table_and_figure(records, config, tmp_path):
    small = report_config(config)
    assert set(small) == {"datasets", "methods", "attributes", "run"}
    opts = {
        "datasets": ["uk-real"],
        "models": table_models(records, small),
        "methods": ["zero-shot", "ours"],
        "task": "attribute",
    }
    for name in ("mae", "steering_diagnosis"):
        pd.testing.assert_frame_equal(
            table_kind(name).build(records, small, opts), table_kind(name).build(records, config, opts)
        )
    fig_opts = {"title": "t", "share_class": "female", "seed": 0, "dataset": "uk-real"}
    for name in ("share", "steering", "calibration"):
        save(FIGURES[name](records, small, fig_opts), tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert set(FIGURE_TABLES) <= set(FIGURES)


def test_table_models_follow_the_records_else_the_run(config):
    assert table_models([{"model": "b"}, {"model": "a"}, {"model": "b"}], config) == ["b", "a"]
    assert table_models([{"dataset": "uk-real"}], config) == list(config["run"]["models"])
