"""training.overrides: training values per (model, dataset, method), how they resolve, how they are checked,
what config/paper.yaml sets with them, and which train jobs a change reruns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distalign.core.config import (
    ConfigError,
    TrainSpec,
    load_config,
    method_training,
    training_override_entries,
    training_params,
    validate_config,
)

MODEL = "smollm2-135m-instruct"
PAPER_MODELS = [
    "qwen2.5-7b-instruct",
    "qwen2.5-1.5b-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.2-1b-instruct",
]
OURS_FAMILY = ["ours", "ours-no-kl", "ours-no-kto", "ours-dpo", "ours-words", "ours-pronouns"]


def _raw(repo) -> dict:
    return yaml.safe_load((repo / "config/config.yaml").read_text())


def _with_overrides(repo, entries: list[dict]) -> dict:
    raw = _raw(repo)
    raw["training"]["overrides"] = entries
    return raw


def _paper(repo, *extra: str) -> dict:
    return load_config(repo / "config/config.yaml", repo / "config/paper.yaml", *(repo / e for e in extra))


# ----------------------------------------------------------------------------- resolution


def test_resolution_order(repo):
    """training < methods.<m>.train_overrides < matching entries in list order, each a deep merge."""
    entries = [
        {"methods": ["ours"], "set": {"preference": {"learning_rate": 5.0e-4, "beta": 0.2}}},
        {
            "models": [MODEL],
            "datasets": ["uk-real"],
            "methods": ["ours"],
            "set": {"preference": {"learning_rate": 7.0e-4}},
        },
    ]
    cfg = validate_config(_with_overrides(repo, entries))
    base = cfg["training"]["preference"]
    assert cfg["methods"]["ours"]["train_overrides"]["preference"]["min_steps"] == 126  # the layer in between

    uk = method_training(cfg, "ours", MODEL, "uk-real")["preference"]
    assert uk["learning_rate"] == 7.0e-4  # the later entry wins
    assert uk["beta"] == 0.2  # the earlier entry's other key is kept (deep merge)
    assert uk["min_steps"] == 126  # train_overrides below the entries is kept
    assert uk["epochs"] == base["epochs"]  # training below everything
    assert method_training(cfg, "ours", MODEL, "us-even")["preference"]["learning_rate"] == 5.0e-4
    # train_overrides alone would give its own rate: the entries sit above it
    assert cfg["methods"]["ours"]["train_overrides"]["preference"]["learning_rate"] == 1.0e-3
    ift = method_training(cfg, "ift", MODEL, "uk-real")["preference"]
    assert ift["learning_rate"] == base["learning_rate"] and ift["beta"] == base["beta"]
    # without a model, an entry that selects on models is left out
    assert training_override_entries(cfg, "ours", None, "uk-real") == [0]
    assert method_training(cfg, "ours")["preference"]["learning_rate"] == 5.0e-4

    flipped = validate_config(_with_overrides(repo, entries[::-1]))
    assert method_training(flipped, "ours", MODEL, "uk-real")["preference"]["learning_rate"] == 5.0e-4


def test_the_list_never_reaches_a_job(repo):
    """A job's params and spec carry resolved values only, so that editing an entry reruns only the jobs whose
    values it changes."""
    entries = [{"models": [MODEL], "datasets": ["uk-real"], "methods": ["ours"], "set": {"lora": {"r": 4}}}]
    cfg = validate_config(_with_overrides(repo, entries))
    for method in ("ours", "ift"):
        assert "overrides" not in training_params(cfg, method, MODEL, "uk-real")
        assert "overrides" not in method_training(cfg, method, MODEL, "uk-real")
    assert training_params(cfg, "ours", MODEL, "uk-real")["lora"]["r"] == 4
    assert training_params(cfg, "ours", MODEL, "us-even")["lora"]["r"] == cfg["training"]["lora"]["r"]
    job = TrainSpec.from_config(cfg, "uk-real", "ours", MODEL)
    assert job.training == method_training(cfg, "ours", MODEL, "uk-real") and job.training["lora"]["r"] == 4
    assert TrainSpec.from_config(cfg, "uk-real", "ours").training["lora"]["r"] == cfg["training"]["lora"]["r"]


def test_command_line_strings_in_set_are_read_as_numbers(repo):
    """Snakemake hands nested --config values over as strings; a `set` is read against the training schema."""
    entries = [{"methods": ["ours"], "set": {"preference": {"learning_rate": "5.0e-5", "batch_size": "16"}}}]
    cfg = validate_config(_with_overrides(repo, entries))
    pref = method_training(cfg, "ours", MODEL, "uk-real")["preference"]
    assert pref["learning_rate"] == 5.0e-5 and pref["batch_size"] == 16


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "selector,bad,message",
    [
        ("models", "qwen-7b", "unknown model 'qwen-7b'"),
        ("datasets", "uk-rael", "unknown dataset 'uk-rael'"),
        ("methods", "ours-fast", "unknown method 'ours-fast'"),
        ("methods", "zero-shot", "method 'zero-shot' is of kind 'prompt', which trains nothing"),
        ("datasets", "us-real-from-uk", "dataset 'us-real-from-uk' trains nothing"),
    ],
)
def test_selector_errors_name_the_entry_and_the_name(repo, selector, bad, message):
    entries = [
        {"methods": ["ours"], "set": {"kl_weight": 2.0}},
        {selector: [bad], "set": {"kl_weight": 2.0}},
    ]
    with pytest.raises(ConfigError) as err:
        validate_config(_with_overrides(repo, entries))
    (line,) = [li for li in str(err.value).splitlines() if "training.overrides" in li]
    assert f"config key 'training.overrides[1].{selector}': {message}" in line


@pytest.mark.parametrize(
    "set_,key,message",
    [
        (
            {"preference": {"batch_size": 0}},
            "training.overrides[0].set.preference.batch_size",
            "less than the minimum",
        ),
        (
            {"sft": {"lr_scheduler_type": "exp"}},
            "training.overrides[0].set.sft.lr_scheduler_type",
            "expected one of",
        ),
        ({"lora": {"rank": 4}}, "training.overrides[0].set.lora", "unknown key(s) 'rank'"),
        ({"lr": 1.0e-4}, "training.overrides[0].set", "unknown key(s) 'lr'"),
        ({"overrides": []}, "training.overrides[0].set", "unknown key(s) 'overrides'"),
        ({"kl_weight": 0}, "training.overrides[0].set.kl_weight", "leaves method 'ours-no-kto'"),
    ],
)
def test_set_is_checked_against_the_training_schema(repo, set_, key, message):
    with pytest.raises(ConfigError) as err:
        validate_config(_with_overrides(repo, [{"set": set_}]))
    assert f"config key '{key}'" in str(err.value) and message in str(err.value), str(err.value)


def test_train_overrides_cannot_set_the_list(repo):
    raw = _raw(repo)
    raw["methods"]["ift"]["train_overrides"] = {"overrides": [{"set": {"kl_weight": 2.0}}]}
    with pytest.raises(
        ConfigError, match=r"methods.ift.train_overrides': unknown training key\(s\) \['overrides'\]"
    ):
        validate_config(raw)


# ----------------------------------------------------------------------------- config/paper.yaml


def test_paper_resolves_to_the_authors_values(repo):
    """Qwen2.5-1.5B on UK-real (original-repo.md 3.4, run_gdpo_qwen_1.5b.sh): SFT 1e-4 / 2 epochs, KTO 5e-5 /
    3 epochs / batch 16, LoRA r 32, alpha 16 on q_proj and v_proj, 150 warm-up steps then a constant rate."""
    cfg = _paper(repo)
    tr = training_params(cfg, "ours", "qwen2.5-1.5b-instruct", "uk-real")
    assert tr["lora"] == {"r": 32, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert (tr["sft"]["learning_rate"], tr["sft"]["epochs"], tr["sft"]["batch_size"]) == (1.0e-4, 2, 4)
    pref = tr["preference"]
    assert (pref["learning_rate"], pref["epochs"], pref["batch_size"]) == (5.0e-5, 3, 16)
    for stage in (tr["sft"], pref):
        assert stage["warmup_steps"] == 150 and stage["lr_scheduler_type"] == "constant_with_warmup"
    # IFT is not trained with ours' table: the ms-swift script's values on the text's LoRA
    ift = training_params(cfg, "ift", "qwen2.5-1.5b-instruct", "uk-real")
    assert ift["lora"] == cfg["training"]["lora"] and ift["lora"]["target_modules"] == ["all-linear"]
    assert ift["sft"]["learning_rate"] == 1.0e-6 and "warmup_steps" not in ift["sft"]
    assert training_params(cfg, "dpo", "qwen2.5-1.5b-instruct", "uk-real")["preference"]["batch_size"] == 1
    # the uniform setting: no entry, every job on the base values
    uniform = _paper(repo, "config/paper-uniform.yaml")
    assert uniform["training"]["overrides"] == []
    assert method_training(uniform, "ours", "qwen2.5-1.5b-instruct", "uk-real") == method_training(
        uniform, "ours"
    )
    assert method_training(uniform, "ours")["lora"] == cfg["training"]["lora"]


def test_paper_ours_family_shares_each_cell_and_ours_dpo_counts_pairs(repo):
    """Every method of the ours family trains with its cell's values; ours-dpo batches pairs, so its batch is
    half the KTO stage's flat items."""
    cfg = _paper(repo)
    cells = [(m, d) for m in PAPER_MODELS for d in cfg["run"]["datasets"]]
    assert set(cfg["run"]["models"]) == set(PAPER_MODELS)
    for model, dataset in cells:
        ours = training_params(cfg, "ours", model, dataset)
        assert ours != training_params(cfg, "ours"), (model, dataset)  # a cell entry applies
        for method in OURS_FAMILY:
            other = training_params(cfg, method, model, dataset)
            pref = dict(other["preference"])
            if method == "ours-dpo":
                assert 2 * pref.pop("batch_size") == ours["preference"]["batch_size"], (model, dataset)
                pref["batch_size"] = ours["preference"]["batch_size"]
            assert {**other, "preference": pref} == ours, (method, model, dataset)


def _authors_table(repo) -> dict[tuple[str, str], dict]:
    """The per-run table of original-repo.md 3.4, read from the reference (not part of the repository)."""
    path = Path(repo).parent / "shared/reference/original-repo.md"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    text = path.read_text().split("### 3.4", 1)[1].split("### 3.5", 1)[0]
    models = {
        "Qwen2.5-7B": "qwen2.5-7b-instruct",
        "Qwen2.5-1.5B": "qwen2.5-1.5b-instruct",
        "Llama-3.1-8B": "llama-3.1-8b-instruct",
        "Llama-3.2-1B": "llama-3.2-1b-instruct",
    }
    datasets = ["uk-real", "us-real", "uk-even", "us-even", "race-even", "sentiment-even"]
    num = r"([\d.]+e-\d+)"
    table: dict[tuple[str, str], dict] = {}
    for line in text.replace("**", "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        head = re.match(r"(\S+) \(r=(\d+)\)", cells[0])
        if not head or head.group(1) not in models:
            continue
        model = models[head.group(1)]
        for dataset, cell in zip(datasets, cells[1:], strict=True):
            if "same as Qwen-1.5B" in cell:
                table[(model, dataset)] = {
                    **table[("qwen2.5-1.5b-instruct", dataset)],
                    "r": int(head.group(2)),
                }
                continue
            m = re.search(rf"SFT {num}/(\d+) · KTO {num}/(\d+)/(\d+)", cell)
            if m:
                sft_lr, sft_ep, kto_lr, kto_ep, batch = m.groups()
                sft_batch = 4
            else:  # a commented-out run: SFT bs<b> <lr>/<epochs> · KTO bs<b> <lr>/<epochs>
                m = re.search(rf"SFT bs(\d+) {num}/(\d+) · KTO bs(\d+) {num}/(\d+)", cell)
                assert m, cell
                sft_batch, sft_lr, sft_ep, batch, kto_lr, kto_ep = m.groups()
            table[(model, dataset)] = {
                "r": int(head.group(2)),
                "sft": (float(sft_lr), int(sft_ep), int(sft_batch)),
                "kto": (float(kto_lr), int(kto_ep), int(batch)),
            }
    assert len(table) == 24, sorted(table)
    return table


def test_paper_matches_the_authors_table_cell_by_cell(repo):
    cfg = _paper(repo)
    for (model, dataset), want in _authors_table(repo).items():
        tr = training_params(cfg, "ours", model, dataset)
        got = {
            "r": tr["lora"]["r"],
            "sft": (tr["sft"]["learning_rate"], tr["sft"]["epochs"], tr["sft"]["batch_size"]),
            "kto": (
                tr["preference"]["learning_rate"],
                tr["preference"]["epochs"],
                tr["preference"]["batch_size"],
            ),
        }
        assert got == want, (model, dataset)


# ----------------------------------------------------------------------------- pre-flight, runner


def test_preflight_names_the_entry_that_sets_the_targets(repo):
    from distalign.modeling.preflight import cuda_requests, lora_targets

    entries = [
        {
            "models": [MODEL],
            "datasets": ["us-even"],
            "methods": ["ours"],
            "set": {"lora": {"target_modules": ["q_proj"]}},
        },
        {"models": [MODEL], "methods": ["ift"], "set": {"device": "cuda"}},
    ]
    cfg = validate_config(_with_overrides(repo, entries))
    found = lora_targets(cfg, ["uk-real", "us-even"], ["ift", "ours"], MODEL)
    assert found == [
        {
            "key": "training.lora.target_modules",
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "methods": ["ift", "ours"],
        },
        {"key": "training.overrides[0].set.lora.target_modules", "targets": ["q_proj"], "methods": ["ours"]},
    ]
    assert cuda_requests(cfg, ["uk-real"], ["ift", "ours"], MODEL) == {
        "training.overrides[1].set.device": ["training of ift"]
    }
    assert cuda_requests(cfg, ["uk-real"], ["ift", "ours"], "another-model") == {}


def test_a_stage_warmup_reaches_the_trainer(repo):
    from distalign.training.runner import FIXED, _hf_args

    cfg = validate_config(_raw(repo))
    tr = method_training(cfg, "ift")
    assert _hf_args(tr, tr["sft"], Path("x"), 1, "cpu")["warmup_steps"] == FIXED["warmup_steps"]
    stage = {**tr["sft"], "warmup_steps": 150}
    assert _hf_args(tr, stage, Path("x"), 1, "cpu")["warmup_steps"] == 150


# ----------------------------------------------------------------------------- the workflow


def _outputs_of(dry_run: str) -> list[str]:
    return sorted(
        {p.strip() for line in re.findall(r"^\s+output: (.+)$", dry_run, re.M) for p in line.split(",")}
    )


def test_changing_one_entry_reruns_only_its_training_job(workdir, snakemake_run):
    """After every training job of two models x two datasets has run (recorded with --touch), changing the value
    of an entry for one (model, dataset) reruns that job only, for the reason that its params changed; an entry
    that sets what a job already has reruns nothing."""
    overlay = workdir / "config/overrides.yaml"
    cfg = {
        "run": {
            "datasets": ["uk-real", "us-even"],
            "models": [MODEL, "smollm2-b"],
            "methods": ["ift", "ours"],
        },
        "models": {
            "smollm2-b": {
                "source": "embedded",
                "path_or_id": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "dtype": "float32",
            }
        },
        "training": {
            "overrides": [
                {
                    "models": ["smollm2-b"],
                    "datasets": ["us-even"],
                    "methods": ["ours"],
                    "set": {"preference": {"learning_rate": 1.0e-4}},
                }
            ]
        },
    }
    targets = [
        f"results/adapters/{d}/{m}/{method}"
        for d in ("uk-real", "us-even")
        for m in (MODEL, "smollm2-b")
        for method in ("ift", "ours")
    ]

    def dry() -> str:
        overlay.write_text(yaml.safe_dump(cfg))
        proc = snakemake_run(workdir, "-n", *targets, "--configfile", str(overlay), timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:]
        return proc.stdout

    first = dry()
    for out in _outputs_of(first):  # stand-ins for every output, then --touch records them as made
        path = workdir / out
        if Path(out).suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    touch = snakemake_run(
        workdir, "--touch", "--cores", "1", *targets, "--configfile", str(overlay), timeout=300
    )
    assert touch.returncode == 0, touch.stdout[-3000:]
    assert "Nothing to be done" in dry()

    cfg["training"]["overrides"][0]["set"]["preference"]["learning_rate"] = 2.0e-4
    changed = dry()
    trained = re.findall(
        r"wildcards: dataset=(\S+), model=(\S+), method=(\S+)\n", changed.split("rule train:", 1)[-1]
    )
    assert changed.count("rule train:") == 1 and trained[0] == ("us-even", "smollm2-b", "ours"), changed[
        -3000:
    ]
    assert "Params have changed since last execution" in changed.split("rule train:", 1)[1]

    cfg["training"]["overrides"][0]["set"]["preference"]["learning_rate"] = 1.0e-4  # back to what was made
    cfg["training"]["overrides"].insert(0, {"models": [MODEL], "set": {"kl_weight": 1.0}})  # the value it has
    assert "Nothing to be done" in dry()


def test_snakemake_layering_gives_the_two_settings(repo):
    """The files as Snakemake layers them (its own loader and merge, which replaces lists): paper.yaml keeps its
    entries over config.yaml, and paper-uniform.yaml after it drops them all."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    def layered(*names: str) -> dict:
        config: dict = {}
        for name in names:
            update_config(config, load_configfile(str(repo / "config" / name)))
        return validate_config(config)

    scripts = layered("config.yaml", "paper.yaml")
    uniform = layered("config.yaml", "paper.yaml", "paper-uniform.yaml")
    assert scripts == _paper(repo) and len(scripts["training"]["overrides"]) > 24
    assert uniform["training"]["overrides"] == []
    assert {k: v for k, v in scripts["training"].items() if k != "overrides"} == {
        k: v for k, v in uniform["training"].items() if k != "overrides"
    }
    cell = ("ours", "llama-3.2-1b-instruct", "race-even")
    assert training_params(scripts, *cell)["sft"]["epochs"] == 1  # run_gdpo_llama_1b.sh, race even US
    assert training_params(uniform, *cell) == training_params(uniform, "ours")
