"""config.TrainSpec: what a train job reads, from a whole config or from the train rule's params."""

import copy

import pytest

from distalign.core.config import (
    TRAINED_KINDS,
    TrainSpec,
    method_training,
    story_binding_weight,
    training_params,
)


def test_from_params_matches_from_config(config):
    a = TrainSpec.from_config(config, "uk-real", "ours")
    name = config["datasets"]["uk-real"]["attribute"]
    params = {"spec": config["methods"]["ours"], "training": method_training(config, "ours")}
    b = TrainSpec.from_params("ours", params, {"name": name, **config["attributes"][name]}, config["seed"])
    assert a == b
    assert a.kind == "ours" and a.attribute_name == name and a.seed == int(config["seed"])
    assert "name" not in b.attribute


def test_specs_are_copies(config):
    job = TrainSpec.from_config(config, "uk-real", "ours")
    job.training["lora"]["r"] = -1
    assert config["training"]["lora"]["r"] != -1
    with pytest.raises(AttributeError):
        job.seed = 1


@pytest.mark.parametrize("story_data,weight", [(False, 0.5), (True, 0.5), (True, 0.0)])
def test_story_binding_weight_agrees_with_config(config, story_data, weight):
    cfg = copy.deepcopy(config)
    cfg["methods"]["ours"]["story_data"] = story_data
    cfg["training"]["story_binding_weight"] = weight
    assert TrainSpec.from_config(cfg, "uk-real", "ours").story_binding_weight == story_binding_weight(
        cfg, "ours"
    )
    # the rule's params drop the key where it has no effect; the spec reads 0 then too
    params = {"spec": cfg["methods"]["ours"], "training": training_params(cfg, "ours")}
    name = cfg["datasets"]["uk-real"]["attribute"]
    job = TrainSpec.from_params("ours", params, {"name": name, **cfg["attributes"][name]}, 1)
    assert job.story_binding_weight == story_binding_weight(cfg, "ours")


def test_train_adapter_refuses_a_spec_of_another_method_before_loading_anything(config, tmp_path):
    from distalign.training.runner import TrainError, train_adapter

    job = TrainSpec.from_config(config, "uk-real", "ours")
    with pytest.raises(TrainError, match="spec is of method 'ours', not 'ift'"):
        train_adapter(
            job, "uk-real", "ift", tmp_path / "no-model", tmp_path / "sft", tmp_path / "pref", tmp_path / "o"
        )


def test_untrained_kinds_are_refused(config, tmp_path):
    from distalign.training.runner import TrainError, train_adapter

    prompt_methods = [m for m, s in config["methods"].items() if s["kind"] not in TRAINED_KINDS]
    assert prompt_methods
    with pytest.raises(TrainError, match="only ift, dpo and ours are trained"):
        train_adapter(
            config,
            "uk-real",
            prompt_methods[0],
            tmp_path / "no-model",
            tmp_path / "sft",
            tmp_path / "pref",
            tmp_path / "o",
        )
