"""Hinted methods (kind hinted): the class drawn outside the model and asked for by its hint, and
the calibration that corrects for hints the model does not follow.

Generation runs through the API path against :class:`test_endpoints.FaultServer` (a stub that
echoes the prompt, for checking what is sent; not a model), so no model is loaded here.
"""

from collections import Counter

import pytest
from test_api_models import _api_workdir, _config, _pointer, api_key  # noqa: F401  (autouse fixture)
from test_endpoints import FaultServer

from distalign.core.attributes import attribute_of_dataset
from distalign.core.config import ConfigError, GenerationSpec, inapplicable_reason, validate_config
from distalign.evaluation.calibration import CalibrationError, hint_calibration
from distalign.generation.job import GenerationError
from distalign.generation.runner import generate

HINTS = {"male": "Assume the person is a man.", "female": "Assume the person is a woman."}


def _requests(n, target):
    return [
        {
            "context_id": i % 2,
            "context": f"c{i % 2}",
            "prompt_id": f"val-{i}",
            "prompt": f"Q{i}?",
            "target": target,
        }
        for i in range(n)
    ]


def _run(cfg, tmp_path, method, requests, **kw):
    spec = GenerationSpec.from_config(cfg, "uk-real", method, model="hosted")
    spec = GenerationSpec(**{**spec.__dict__, "api_cache": str(tmp_path / "cache")})
    return generate(
        requests,
        spec=spec,
        dataset="uk-real",
        model="hosted",
        task="attribute",
        model_dir=_pointer(tmp_path, cfg),
        **kw,
    )


def test_the_hinted_class_is_drawn_per_sample_from_the_target_and_sent(config, tmp_path):
    with FaultServer() as server:
        cfg = _config(config, server.url)
        cfg["generation"]["samples_per_prompt"] = 100
        rows = _run(cfg, tmp_path, "hinted", _requests(4, [0.3, 0.7]))
        again = _run(cfg, tmp_path / "again", "hinted", _requests(4, [0.3, 0.7]))
    assert len(rows) == 400 and rows == again  # seeded: the same draws on a rerun (from another cache)
    share = Counter(r["hint"] for r in rows)["female"] / len(rows)
    assert 0.62 < share < 0.78, share  # 0.7 within sampling noise (SD 0.023)
    for r in rows[:10]:
        assert r["prompt"].endswith(HINTS[r["hint"]]) and r["response"] == f"echo: {r['prompt']}"
    sent = {b["messages"][0]["content"] for b in server.bodies}
    assert {r["prompt"] for r in rows} <= sent


def test_calibrated_weights_replace_the_target_and_each_mode_asks_every_hint(config, tmp_path):
    with FaultServer() as server:
        cfg = _config(config, server.url)
        cfg["generation"]["samples_per_prompt"] = 3
        rows = _run(
            cfg,
            tmp_path,
            "hinted-calibrated",
            _requests(2, [0.5, 0.5]),
            hint_weights={"0": [1, 0], "1": [0, 1]},
        )
        assert [r["hint"] for r in rows] == ["male"] * 3 + ["female"] * 3  # context 0 -> male, 1 -> female
        each = _run(cfg, tmp_path / "each", "hinted-calibrated", _requests(2, [0.5, 0.5]), hint_mode="each")
        assert len(each) == 2 * 2 * 3 and [r["hint"] for r in each[:4]] == [
            "male",
            "female",
            "male",
            "female",
        ]
        with pytest.raises(GenerationError, match="needs the calibration's weights"):
            _run(cfg, tmp_path / "none", "hinted-calibrated", _requests(2, [0.5, 0.5]))
        with pytest.raises(GenerationError, match="no weights for context 1"):
            _run(
                cfg,
                tmp_path / "part",
                "hinted-calibrated",
                _requests(2, [0.5, 0.5]),
                hint_weights={"0": [1, 0]},
            )


def test_the_calibration_corrects_for_a_hint_the_model_does_not_follow(config):
    attribute = attribute_of_dataset(config, "uk-real")
    # the male hint is followed 4 times in 5, the female one always; 2 invalid answers are left out
    rows = (
        [{"hint": "male", "label": "male"}] * 8
        + [{"hint": "male", "label": "female"}] * 2
        + [{"hint": "female", "label": "female"}] * 10
        + [{"hint": "male", "label": None}] * 2
    )
    targets = [
        {"context_id": 0, "context": "c0", "target": [0.8, 0.2]},
        {"context_id": 1, "context": "c1", "target": [0.5, 0.5]},
    ]
    out = hint_calibration(rows, targets, attribute)
    assert out["confusion"] == [[0.8, 0.2], [0.0, 1.0]] and out["n_invalid"] == [2, 0]
    assert out["follow_rate"] == [0.8, 1.0]
    # 0.8 male is reached by always hinting male; 0.5 by hinting male 5/8 of the time
    assert out["weights"]["0"] == pytest.approx([1.0, 0.0]) and out["weights"]["1"] == pytest.approx(
        [0.625, 0.375]
    )
    assert out["expected_mae"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(CalibrationError, match=r"no valid answer under the hint of class\(es\) \['female'\]"):
        hint_calibration(
            [{"hint": "male", "label": "male"}, {"hint": "female", "label": None}], targets, attribute
        )


def test_hinted_config_errors_and_reasons(config):
    bad = {**config, "methods": {**config["methods"], "x": {"kind": "prompt", "calibrated": True}}}
    with pytest.raises(ConfigError, match=r"'methods\.x\.calibrated': only methods of kind 'hinted'"):
        validate_config(bad)
    reason = inapplicable_reason(config, "race-even", "hinted", "story")
    assert "have no story_hint" in reason or "no story judge" in reason
    for c in config["attributes"]["gender"]["classes"]:
        c["attribute_hint"] = None
    assert "have no attribute_hint" in inapplicable_reason(config, "uk-real", "hinted", "attribute")


def test_a_calibrated_hinted_method_on_an_api_model_plans_its_calibration(workdir, snakemake_run):
    wd = _api_workdir(workdir)
    target = "results/metrics/uk-real/hosted/hinted-calibrated/attribute.json"
    proc = snakemake_run(
        wd, "-n", "--configfile", "config/config.yaml", "config/api.yaml", "--", target, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rule in ("hint_calibration_generate", "hint_calibration_label", "hint_calibration", "generate"):
        assert f"rule {rule}:" in proc.stdout, rule
    assert "rule train:" not in proc.stdout


@pytest.mark.slow
def test_hinted_on_a_local_model_sends_the_same_hinted_prompts(config, tmp_path, embedded_model_dir):
    """The transformers backend draws the same classes and sends the same texts as the API path."""
    pytest.importorskip("torch")
    from helpers import SMOL_VOCAB, TWO_LAYERS, save_model_dir, tiny_llama
    from test_generate import _requests as local_requests

    model_dir = save_model_dir(
        tmp_path / "tiny",
        tiny_llama(SMOL_VOCAB, **TWO_LAYERS, max_position_embeddings=512),
        embedded_model_dir,
    )
    config["generation"].update(
        backend="transformers", samples_per_prompt=4, max_new_tokens={"attribute": 3, "story": 3}
    )
    spec = GenerationSpec.from_config(config, "uk-real", "hinted")
    kw = dict(spec=spec, dataset="uk-real", model="tiny", task="attribute", model_dir=model_dir, threads=2)
    rows = generate(local_requests(3), **kw)
    assert rows == generate(local_requests(3), **kw) and len(rows) == 12
    with FaultServer() as server:
        cfg = _config(config, server.url)
        cfg["generation"].update(samples_per_prompt=4)
        api_spec = GenerationSpec.from_config(cfg, "uk-real", "hinted", model="hosted")
        api_spec = GenerationSpec(**{**api_spec.__dict__, "api_cache": str(tmp_path / "cache")})
        api_rows = generate(
            local_requests(3),
            spec=api_spec,
            dataset="uk-real",
            model="tiny",
            task="attribute",
            model_dir=_pointer(tmp_path, cfg),
        )
    # the draw is the library's, not the backend's: same classes, same texts (each row's seed is the
    # one its backend sampled with: a batch seed on transformers, a request seed on the API)
    assert [(r["hint"], r["prompt"]) for r in rows] == [(r["hint"], r["prompt"]) for r in api_rows]
    assert {r["hint"] for r in rows} == {"male", "female"}
