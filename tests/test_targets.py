import math

import pytest

from distalign.core.attributes import Attribute, attribute_of_dataset
from distalign.data.targets import (
    CensusError,
    TargetError,
    build_targets,
    check_distribution,
    load_census,
    read_targets_csv,
    write_targets_csv,
)


def test_census_files_have_the_paper_occupations(repo):
    uk = load_census(repo / "resources/census/uk.csv")
    us = load_census(repo / "resources/census/us.csv")
    assert len(uk) == 25 and len(us) == 14
    assert uk[0].occupation == "Vehicle technicians, mechanics and electricians"
    assert us[3].occupation == "Software developers"
    assert all(r.source for r in uk + us)


def test_real_targets_are_census_shares(repo, config):
    attr = attribute_of_dataset(config, "uk-real")
    rows = build_targets(load_census(repo / "resources/census/uk.csv"), attr, "real")
    assert rows[0]["target"][1] == pytest.approx(1501 / (186605 + 1501))
    assert rows[-1]["target"][1] == pytest.approx(137139 / (9382 + 137139))
    for r in rows:
        assert math.isclose(sum(r["target"]), 1.0, abs_tol=1e-12)
    us = build_targets(load_census(repo / "resources/census/us.csv"), attr, "real")
    assert us[3]["target"][1] == pytest.approx(0.2006, abs=5e-5)  # software developers, 20% female


@pytest.mark.parametrize("dataset,k", [("uk-even", 2), ("race-even", 5), ("sentiment-even", 3)])
def test_even_targets_are_exact(repo, config, dataset, k):
    attr = attribute_of_dataset(config, dataset)
    census = load_census(repo / f"resources/census/{config['datasets'][dataset]['census']}.csv")
    rows = build_targets(census, attr, "even")
    assert all(r["target"] == [1 / k] * k for r in rows)


def test_even_targets_can_reproduce_the_authors_rounding(repo, config):
    attr = attribute_of_dataset(config, "sentiment-even")
    rows = build_targets(load_census(repo / "resources/census/us.csv"), attr, "even", round_even=3)
    assert rows[0]["target"] == [0.333, 0.333, 0.333]


def test_real_target_needs_class_columns(repo, config):
    attr = attribute_of_dataset(config, "race-even")
    with pytest.raises(TargetError, match="needs count columns"):
        build_targets(load_census(repo / "resources/census/us.csv"), attr, "real", census_name="us")


def test_targets_csv_round_trip(tmp_path, repo, config):
    attr = attribute_of_dataset(config, "us-real")
    rows = build_targets(load_census(repo / "resources/census/us.csv"), attr, "real")
    write_targets_csv(tmp_path / "t.csv", rows, attr)
    back = read_targets_csv(tmp_path / "t.csv", attr)
    assert [r["target"] for r in back] == [r["target"] for r in rows]


HEADER = "occupation,group,male,female,year,source\n"


@pytest.mark.parametrize(
    "body,match",
    [
        (
            "Nurses,Health,10,abc,2024,x\n",
            r"row 2, column 'female': expected a non-negative number, got 'abc'",
        ),
        ("Nurses,Health,-3,5,2024,x\n", r"row 2, column 'male': expected a non-negative number, got '-3'"),
        ("Nurses,Health,1,2,2024,x\nNurses,Health,3,4,2024,x\n", r"row 3: duplicate occupation 'Nurses'"),
        (",Health,1,2,2024,x\n", r"row 2: empty occupation"),
        ("Nurses,Health,0,0,2024,x\n", r"row 2: all counts are zero"),
        ("Nurses,Health,1,2\n", r"row 2: expected 6 fields"),
        ("", r"no data rows"),
    ],
)
def test_malformed_census_is_rejected_with_file_and_row(tmp_path, body, match):
    p = tmp_path / "bad.csv"
    p.write_text(HEADER + body)
    with pytest.raises(CensusError, match=match) as err:
        load_census(p)
    assert str(p) in str(err.value)


def test_census_missing_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("job,male,female\nx,1,2\n")
    with pytest.raises(CensusError, match=r"missing column\(s\) \['occupation', 'group', 'year', 'source'\]"):
        load_census(p)


def test_distribution_checks():
    with pytest.raises(TargetError, match=r"must lie in \[0, 1\]"):
        check_distribution([1.2, -0.2], "ctx")
    with pytest.raises(TargetError, match="must sum to 1"):
        check_distribution([0.5, 0.4], "ctx")
    check_distribution([0.25, 0.75], "ctx")


def test_user_defined_attribute_needs_yaml_only(tmp_path):
    attr = Attribute.from_config(
        "age",
        {
            "classes": [
                {"name": "young", "label": "Under 40", "tokens": {"digits": "0"}},
                {"name": "old", "label": "40 or older", "tokens": {"digits": "1"}},
            ]
        },
    )
    p = tmp_path / "c.csv"
    p.write_text("occupation,group,young,old,year,source\nPilots,Transport,30,70,2024,x\n")
    rows = build_targets(load_census(p), attr, "real")
    assert rows[0]["target"] == pytest.approx([0.3, 0.7])
