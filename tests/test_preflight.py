"""Pre-flight checks (distalign.modeling.preflight, workflow/rules/preflight.smk): bad input that only the model or
an endpoint reveals fails in a cheap job before training or generation."""
# Fixtures are imported from tests/openai_server.py, so test arguments "redefine" them:
# ruff: noqa: F811

import json
import re
import time

import pytest
import yaml
from helpers import tiny_llama_config
from openai_server import down_url, openai_server  # noqa: F401  (pytest fixtures)

from distalign.modeling import preflight as preflight
from distalign.modeling.models import prepare_model
from distalign.modeling.preflight import (
    Endpoint,
    PreflightError,
    check_endpoint_job,
    check_endpoints,
    check_model_job,
    job_endpoints,
    job_name,
    parse_job,
    passed_dir_of,
)

KEY_ENV = "DISTALIGN_TEST_PREFLIGHT_KEY"
MODEL = "tiny-llama"
OURS = "train/uk-real/ours"
WORDS = "train/uk-real/ours-words"


def _tiny_model(root, chat_template=True):
    """A prepared `path` model with a one-layer Llama config and a word-piece tokenizer in which 'woman'
    is two pieces (wo, ##man) and the other steering tokens of the default config are one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    src = root / "src"
    vocab = ["[UNK]", "[PAD]", "0", "1", "2", "3", "4", "man", "wo", "##man", "he", "she", "Male", "Female"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    if chat_template:
        fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(src)
    tiny_llama_config(len(vocab), kv_heads=2).save_pretrained(src)
    out = root / MODEL
    prepare_model(MODEL, {"source": "path", "path_or_id": str(src)}, out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-preflight")


def _problems(err: PreflightError) -> list[str]:
    return [line[4:] for line in str(err).splitlines() if line.startswith("  - ")]


# ----------------------------------------------------------------------------- model checks


def test_a_good_config_passes_and_reports_what_it_checked(config, tiny_model):
    report = check_model_job(config, MODEL, tiny_model, OURS)
    assert report["token_sets"] == [
        {
            "attribute": "gender",
            "token_set": "digits",
            "methods": ["ours"],
            "tokens": [[0, "male", "0"], [1, "female", "1"]],
        }
    ]
    assert report["lora_targets"] == [
        {
            "key": "training.lora.target_modules",
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "methods": ["ift", "dpo", "ours"],
        }
    ]
    assert report["datasets"] == ["uk-real", "us-even"]


def test_a_steering_token_that_splits_is_named_with_its_pieces(config, tiny_model):
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, tiny_model, WORDS)
    assert _problems(err.value) == [
        "methods.ours-words: steering token 'woman' of class female (attributes.gender, token set words) splits "
        "into 2 tokens ['wo', '##man'] in the tokenizer of model tiny-llama; a steering token must be one token: "
        "change attributes.gender.classes[1].tokens.words or the method's token_set"
    ]
    assert str(err.value).startswith(
        f"pre-flight check before job {WORDS} (model tiny-llama) found 1 problem(s)"
    )


def test_the_run_is_checked_not_only_the_job(config, tiny_model):
    """ours-words in run.methods fails a job of zero-shot too; a method the run does not use is not checked."""
    check_model_job(config, MODEL, tiny_model, "generate/uk-real/zero-shot/attribute")
    config["run"]["methods"].append("ours-words")
    with pytest.raises(PreflightError, match="steering token 'woman'"):
        check_model_job(config, MODEL, tiny_model, "generate/uk-real/zero-shot/attribute")


def test_a_tokenizer_without_chat_template(config, tmp_path):
    model_dir = _tiny_model(tmp_path, chat_template=False)
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, model_dir, OURS)
    (problem,) = _problems(err.value)
    assert problem.startswith("models.tiny-llama: ") and "the tokenizer has no chat template" in problem


def test_repeated_token_ids_are_a_problem(config, tiny_model):
    config["attributes"]["gender"]["classes"][0]["tokens"]["words"] = "he"
    config["attributes"]["gender"]["classes"][1]["tokens"]["words"] = "he "  # the same id after whitespace
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, tiny_model, WORDS)
    (problem,) = _problems(err.value)
    assert problem.startswith("methods.ours-words: steering tokens of attributes.gender (token set words)")
    assert "map to repeated ids" in problem


def test_lora_targets_the_model_lacks(config, tiny_model):
    config["training"]["lora"]["target_modules"] = ["q_proj", "query_key_value", "self_attn"]
    config["methods"]["dpo"]["train_overrides"] = {"lora": {"target_modules": ["c_attn"]}}
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, tiny_model, OURS)
    problems = _problems(err.value)
    adaptable = "['down_proj', 'embed_tokens', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"
    assert problems == [
        "training.lora.target_modules: LoRA target module 'query_key_value' matches no module of model tiny-llama "
        f"(used by methods.ift, methods.ours); its adaptable layers are named {adaptable}",
        "training.lora.target_modules: LoRA target module 'self_attn' names only ['LlamaAttention'] modules of "
        f"model tiny-llama (used by methods.ift, methods.ours), which LoRA cannot adapt; its adaptable layers are "
        f"named {adaptable}",
        "methods.dpo.train_overrides.lora.target_modules: LoRA target module 'c_attn' matches no module of model "
        f"tiny-llama (used by methods.dpo); its adaptable layers are named {adaptable}",
    ]


def test_all_linear_and_full_names_are_peft_s_business(config, tiny_model):
    config["training"]["lora"]["target_modules"] = ["all-linear"]
    check_model_job(config, MODEL, tiny_model, OURS)
    config["training"]["lora"]["target_modules"] = ["model.layers.0.self_attn.q_proj", "mlp.up_proj"]
    check_model_job(config, MODEL, tiny_model, OURS)


def test_cuda_without_a_gpu(config, tiny_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config["training"]["device"] = "cuda"
    config["methods"]["ours"]["train_overrides"]["device"] = "cpu"
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, tiny_model, OURS)
    (problem,) = _problems(err.value)
    assert problem.startswith("training.device: 'cuda' but torch ")
    assert (
        "(used by generation, story data and capabilities jobs, training of ift, training of dpo)" in problem
    )
    # a job on a cluster node gets its GPU from the scheduler: the submit host's lack of one is no problem
    check_model_job(config, MODEL, tiny_model, OURS, cuda_here=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_model_job(config, MODEL, tiny_model, OURS)


def test_every_problem_in_one_message(config, tiny_model, monkeypatch, down_url):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config["training"]["device"] = "cuda"
    config["training"]["lora"]["target_modules"] = ["q_proj", "qkv"]
    config["run"]["tasks"] = ["attribute", "story"]
    config["judge"] = {
        **config["judge"],
        "story": "llm",
        "llm": {**config["judge"]["llm"], "base_url": down_url, "model": "judge", "api_key_env": KEY_ENV},
    }
    with pytest.raises(PreflightError) as err:
        check_model_job(config, MODEL, tiny_model, WORDS)
    keys = [p.split(":", 1)[0] for p in _problems(err.value)]
    assert keys == [
        "methods.ours-words",
        "training.lora.target_modules",
        "training.device",
        "judge.llm.base_url",
    ]
    assert "found 4 problem(s)" in str(err.value)


def test_a_pass_is_remembered_until_what_it_read_changes(config, tiny_model, tmp_path, monkeypatch):
    calls = []
    real = preflight._model_problems
    monkeypatch.setattr(preflight, "_model_problems", lambda *a: calls.append(a[0]) or real(*a))
    for _ in range(2):
        check_model_job(config, MODEL, tiny_model, OURS, passed_dir=tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    config["training"]["lora"]["target_modules"] = ["q_proj"]
    check_model_job(config, MODEL, tiny_model, OURS, passed_dir=tmp_path)
    assert len(calls) == 2
    # a failure is never remembered
    with pytest.raises(PreflightError):
        check_model_job(config, MODEL, tiny_model, WORDS, passed_dir=tmp_path)
    with pytest.raises(PreflightError):
        check_model_job(config, MODEL, tiny_model, WORDS, passed_dir=tmp_path)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.json"))) == 2


def test_job_names_round_trip():
    """A sweep point (generate's input, inherited) is named after generate with its own wildcards after the
    leading ones, so it never shares a marker with the test-set generation."""
    wildcards = {
        "dataset": "uk-real",
        "model": "m",
        "method": "ours",
        "task": "attribute",
        "knob": "top_p",
        "value": "0.5",
        "rep": "1",
    }
    sweep = job_name("generate", wildcards, skip=("model",))
    plain = job_name(
        "generate", {k: wildcards[k] for k in ("dataset", "model", "method", "task")}, skip=("model",)
    )
    assert (sweep, plain) == (
        "generate/uk-real/ours/attribute/top_p/0.5/1",
        "generate/uk-real/ours/attribute",
    )
    assert parse_job(sweep, skip=("model",)) == (
        "generate",
        {"dataset": "uk-real", "method": "ours", "task": "attribute"},
    )
    label = job_name("label", {"dataset": "d", "model": "m", "method": "ours", "task": "story"})
    assert label == "label/d/m/ours/story" and parse_job(label)[1]["task"] == "story"
    assert parse_job("story_data/uk-real", skip=("model",)) == ("story_data", {"dataset": "uk-real"})
    with pytest.raises(ValueError, match="expected the values of"):
        parse_job("train/uk-real", skip=("model",))
    with pytest.raises(ValueError, match="unknown pre-flight consumer"):
        job_name("metrics", wildcards)
    marker = f"results/preflight/models/m/{sweep}.json"
    assert passed_dir_of(marker, sweep).as_posix() == "results/preflight/models/m/.passed"


# ----------------------------------------------------------------------------- endpoints


def _judge(url, model="stub-model", env=KEY_ENV):
    return Endpoint("story LLM judge", "judge.llm", url, model, env)


def test_a_working_endpoint_passes(openai_server):
    assert check_endpoints([_judge(openai_server.url)]) == []
    assert openai_server.count == 0  # GET /v1/models only, no chat request


def test_an_unreachable_endpoint_is_named_by_url(down_url):
    t0 = time.perf_counter()
    (problem,) = check_endpoints([_judge(down_url)])
    assert time.perf_counter() - t0 < 5
    assert problem.startswith(
        f"judge.llm.base_url: the story LLM judge at {down_url} cannot be reached "
        f"(GET {down_url}/models: APIConnectionError"
    )


def test_a_model_the_endpoint_does_not_serve(openai_server):
    assert check_endpoints([_judge(openai_server.url, model="Qwen/Qwen3-30B")]) == [
        f"judge.llm.model: 'Qwen/Qwen3-30B' is not served by the story LLM judge at {openai_server.url} "
        f"(GET {openai_server.url}/models lists ['stub-model'])"
    ]


def test_a_url_that_is_not_an_openai_base_url(openai_server):
    root = openai_server.url.removesuffix("/v1")  # the server's root: GET /models is a 404 there
    (problem,) = check_endpoints([_judge(root)])
    assert problem == (
        f"judge.llm.base_url: GET {root}/models answered HTTP 404; is {root} the base URL of an "
        "OpenAI-compatible server (usually ending in /v1)?"
    )


@pytest.mark.parametrize("value, state", [("", "set but empty"), ("  ", "set but empty"), (None, "not set")])
def test_an_api_key_variable_unset_or_empty(openai_server, monkeypatch, value, state):
    if value is None:
        monkeypatch.delenv(KEY_ENV)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    (problem,) = check_endpoints([_judge(openai_server.url)])
    assert problem.startswith(
        f"judge.llm.api_key_env: environment variable {KEY_ENV} is {state}; the story LLM "
        f"judge at {openai_server.url} needs a non-empty key"
    )


def test_which_jobs_check_which_endpoint(config):
    story = {"task": "story"}
    assert job_endpoints(config, "label", story) == [] and job_endpoints(config, "prompts", {}) == []
    config["judge"] = {**config["judge"], "story": "both", "llm": {**config["judge"]["llm"], "model": "j"}}
    # base_url null: the label job starts its own judge server, there is nothing to check yet
    assert job_endpoints(config, "label", story) == []
    config["judge"]["llm"]["base_url"] = "http://judge:8000/v1"
    judge = Endpoint("story LLM judge", "judge.llm", "http://judge:8000/v1", "j", "OPENAI_API_KEY")
    assert job_endpoints(config, "label", story) == [judge]
    assert job_endpoints(config, "label", {"task": "attribute"}) == []
    # the jobs that load the model check the judge only when the run labels stories
    assert job_endpoints(config, "train", {}) == []
    config["run"]["tasks"] = ["attribute", "story"]
    assert job_endpoints(config, "train", {}) == job_endpoints(config, "capabilities", {}) == [judge]
    config["prompts"]["paraphraser"] = "openai"
    config["prompts"]["openai"]["model"] = "gpt"
    assert job_endpoints(config, "prompts", {}) == [
        Endpoint("paraphraser", "prompts.openai", None, "gpt", "OPENAI_API_KEY")
    ]


def test_a_paraphraser_problem_is_a_warning_while_the_cache_has_replies(config, down_url, tmp_path):
    cache = tmp_path / "cache.jsonl"
    config["prompts"]["paraphraser"] = "openai"
    config["prompts"]["openai"].update(base_url=down_url, model="gpt", api_key_env=KEY_ENV, cache=str(cache))
    job = "prompts/uk-real/attribute"
    with pytest.raises(
        PreflightError, match=re.escape(f"prompts.openai.base_url: the paraphraser at {down_url}")
    ):
        check_endpoint_job(config, job)
    cache.write_text(json.dumps({"key": "k", "reply": "r"}) + "\n")
    report = check_endpoint_job(config, job)
    (warning,) = report["warnings"]
    assert "cannot be reached" in warning and "has 1 replies" in warning


# ----------------------------------------------------------------------------- the workflow


def _rule_blocks(stdout: str, rule: str) -> list[str]:
    return re.findall(rf"^(?:local)?rule {rule}:\n(.*?)(?=^\S|\Z)", stdout, re.MULTILINE | re.DOTALL)


def _input(block: str) -> str:
    return re.search(r"^\s+input: (.*)$", block, re.MULTILINE).group(1)


def test_every_expensive_job_waits_for_its_own_marker(workdir, snakemake_run):
    """Dry run: one pre-flight job per train/generate/capabilities job, each marker read by one job;
    labels and prompts read none while they call no endpoint. With an external story judge the story
    label jobs read an endpoint marker."""
    proc = snakemake_run(workdir, "-n", "all", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    consumers = [
        b
        for r in ("train", "generate", "hint_calibration_generate", "capabilities")
        for b in _rule_blocks(proc.stdout, r)
    ]
    markers = [re.findall(r"results/preflight/models/[^,\s]+\.json", _input(b)) for b in consumers]
    assert all(len(m) == 1 for m in markers), markers
    made = [re.search(r"output: (\S+)", b).group(1) for b in _rule_blocks(proc.stdout, "preflight")]
    assert sorted(made) == sorted(m[0] for m in markers)  # one marker per consumer, none shared
    assert "preflight" not in " ".join(
        _input(b) for r in ("label", "prompts") for b in _rule_blocks(proc.stdout, r)
    )

    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["run"].update(datasets=["uk-real"], methods=["zero-shot"], tasks=["attribute", "story"])
    cfg["judge"] = {"story": "llm", "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "judge"}}
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", "all", timeout=300, env={"OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    labels = [
        (re.search(r"wildcards: .*task=(\w+)", b).group(1), _input(b))
        for b in _rule_blocks(proc.stdout, "label")
    ]
    assert {task for task, _ in labels} == {"attribute", "story"}
    for task, inputs in labels:
        generations = inputs.split(", ")[0]
        method = generations.split("/")[-2]
        marker = f"results/preflight/endpoints/label/uk-real/smollm2-135m-instruct/{method}/story.json"
        assert inputs == (f"{generations}, {marker}" if task == "story" else generations)


@pytest.mark.slow
def test_a_bad_steering_token_stops_the_run_before_training(workdir, snakemake_run):
    """ours-words with a female token that the embedded model splits: the pre-flight job after prepare_model
    fails with the key, and no train or generate job starts."""
    path = workdir / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["attributes"]["gender"]["classes"][1]["tokens"]["words"] = "Woman"  # ['W', 'oman'] in SmolLM2
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(
        workdir,
        "--cores",
        "2",
        "results/metrics/uk-real/smollm2-135m-instruct/ours-words/attribute.json",
        timeout=900,
    )
    assert proc.returncode != 0
    assert "Error in rule preflight:" in proc.stdout, proc.stdout[-5000:]
    assert (
        "methods.ours-words: steering token 'Woman' of class female (attributes.gender, token set words) splits "
        "into 2 tokens ['W', 'oman'] in the tokenizer of model smollm2-135m-instruct"
    ) in proc.stdout
    started = set(re.findall(r"^(?:local)?rule (\w+):$", proc.stdout, re.MULTILINE))
    assert "prepare_model" in started and not started & {"train", "generate"}, started
    assert not (workdir / "results/logs/train").exists() and not (workdir / "results/adapters").exists()


def test_an_unreachable_judge_stops_a_story_run_before_generation(workdir, snakemake_run, down_url):
    """run.tasks [story] with an external judge on a closed port: the run fails in a pre-flight job naming
    the URL, before any story is generated."""
    path = workdir / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["run"].update(datasets=["uk-real"], methods=["zero-shot"], tasks=["story"])
    cfg["judge"] = {"story": "llm", "llm": {"base_url": down_url, "model": "judge"}}
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(
        workdir,
        "--cores",
        "1",
        "results/metrics/uk-real/smollm2-135m-instruct/zero-shot/story.json",
        timeout=600,
        env={"OPENAI_API_KEY": "sk-test"},
    )
    assert proc.returncode != 0
    assert re.search(r"Error in rule preflight(_endpoints)?:", proc.stdout), proc.stdout[-5000:]
    assert f"judge.llm.base_url: the story LLM judge at {down_url} cannot be reached" in proc.stdout
    started = set(re.findall(r"^(?:local)?rule (\w+):$", proc.stdout, re.MULTILINE))
    assert not started & {"generate", "label"}, started
