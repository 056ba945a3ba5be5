"""table5's lm-eval tasks on offline compute nodes: the datasets of the configured lm-eval tasks are
found through lm-eval's own task configs, prefetched on the login node (distalign.cluster.prefetch) and
read offline by the capabilities job (distalign.evaluation.capabilities.check_lm_eval_tasks).

No network: a small stand-in for the Hugging Face Hub (the few endpoints ``datasets.load_dataset`` calls,
served from a folder in a thread, at HF_ENDPOINT) holds one dataset repository, ``org/tiny``, with two
configs; a tiny lm-eval task group over it lives in the test's own task folder
(capabilities.lm_eval_include). The offline checks run in a fresh interpreter with HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1, the stand-in stopped and every socket connection refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TASKS = ["distalign_tiny"]  # the group of the two tasks below

README = """---
configs:
- config_name: easy
  data_files:
  - split: test
    path: data/easy.jsonl
- config_name: hard
  data_files:
  - split: test
    path: data/hard.jsonl
---
A two-config dataset for the prefetch test.
"""

TEMPLATE = """dataset_path: org/tiny
output_type: generate_until
test_split: test
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: answer
generation_kwargs: {until: ["\\n"], max_gen_toks: 4}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""


def _rows(n: int, offset: int) -> str:
    return "".join(
        json.dumps({"question": f"{i}+{offset}?", "answer": str(i + offset)}) + "\n" for i in range(n)
    )


def make_task_folder(root: Path) -> Path:
    """lm-eval task YAMLs: two tasks sharing a template (``include``), one per config, and their group."""
    folder = root / "lm_eval_tasks"
    folder.mkdir()
    (folder / "_tiny_template.yaml").write_text(TEMPLATE)
    for config in ("easy", "hard"):
        (folder / f"tiny_{config}.yaml").write_text(
            f"include: _tiny_template.yaml\ntask: distalign_tiny_{config}\ndataset_name: {config}\n"
        )
    (folder / "tiny_group.yaml").write_text(
        "group: distalign_tiny\ntask: [distalign_tiny_easy, distalign_tiny_hard]\n"
        "aggregate_metric_list: [{metric: exact_match, weight_by_size: true}]\nmetadata: {version: 1.0}\n"
    )
    # A task without a Hugging Face dataset (its data made in Python): nothing to prefetch.
    (folder / "tiny_python.yaml").write_text(
        "task: distalign_tiny_python\ncustom_dataset: !function helpers.make\noutput_type: generate_until\n"
    )
    return folder


class _Hub(BaseHTTPRequestHandler):
    """The Hub endpoints that ``datasets.load_dataset`` calls for a repository without a loading script."""

    root: Path  # set on a subclass: <root>/<org>/<name>/<files>
    requests: list

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _send(self, code, body=b"", headers=None):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _files(self, repo):
        base = self.root / repo
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        self.requests.append(f"{self.command} {url.path}")
        if parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":  # a file
            path = self.root / "/".join(parts[1:3]) / "/".join(parts[5:])
            if path.is_file():
                data = path.read_bytes()
                etag = hashlib.sha1(data).hexdigest()
                return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        if parts[:2] == ["api", "datasets"] and (self.root / "/".join(parts[2:4])).is_dir():
            repo, rest = "/".join(parts[2:4]), parts[4:]
            if not rest or rest[0] == "revision":  # dataset_info
                info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self._files(repo)]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            if rest[0] == "tree":  # the files under a folder
                prefix = "/".join(rest[2:])
                tree = [
                    {
                        "type": "file",
                        "path": f,
                        "size": (self.root / repo / f).stat().st_size,
                        "oid": "0" * 40,
                    }
                    for f in self._files(repo)
                    if not prefix or f.startswith(prefix + "/")
                ]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

    do_HEAD = do_GET


@pytest.fixture()
def fake_hub(tmp_path):
    """A Hub at http://127.0.0.1:<port> holding the dataset repository org/tiny.

    Yields (endpoint, the requests it answered, stop)."""
    root = tmp_path / "hub_repos"
    data = root / "org" / "tiny" / "data"
    data.mkdir(parents=True)
    (root / "org" / "tiny" / "README.md").write_text(README)
    (data / "easy.jsonl").write_text(_rows(2, 0))
    (data / "hard.jsonl").write_text(_rows(3, 10))
    handler = type("Hub", (_Hub,), {"root": root, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests, stop
    stop()


def _env(home: Path, endpoint: str | None = None, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    flag = "1" if offline else "0"
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE=flag, HF_DATASETS_OFFLINE=flag, HF_HUB_DISABLE_TELEMETRY="1")
    env["HF_ENDPOINT"] = endpoint or "http://127.0.0.1:9"  # port 9 (discard): nothing listens
    env["HOME"] = str(home.parent)  # nltk's ~/nltk_data and other home caches: the test's own
    return env


def _cli(*args, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distalign.cluster.prefetch", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


# The capabilities job's check, offline and with every socket connection refused; prints the tasks' docs.
OFFLINE_CHECK = r"""
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")

socket.socket.connect = refuse
socket.create_connection = refuse
from distalign.evaluation.capabilities import check_lm_eval_tasks, lm_eval_task_manager

tasks, include = json.loads(sys.argv[1]), json.loads(sys.argv[2])
tm = lm_eval_task_manager(include, tasks=tasks)
subtasks = check_lm_eval_tasks(tasks, include, tm)
docs = {name: len(list(task.eval_docs)) for name, task in tm.load(tasks)["tasks"].items()}
print(json.dumps({"subtasks": subtasks, "docs": docs}))
"""


def _offline_check(tasks, include, home) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", OFFLINE_CHECK, json.dumps(tasks), json.dumps([str(p) for p in include])]
    return subprocess.run(cmd, env=_env(home, offline=True), capture_output=True, text=True, timeout=600)


def test_paper_tasks_resolve_to_their_hub_datasets():
    """lm-eval 0.4.13's own configs: mmlu expands to 57 subjects of one repository, fetched once."""
    from distalign.evaluation.capabilities import lm_eval_datasets

    repos = {r["path"]: r for r in lm_eval_datasets(["mmlu", "gsm8k", "truthfulqa_mc2", "ifeval"])}
    assert sorted(repos) == ["cais/mmlu", "google/IFEval", "openai/gsm8k", "truthfulqa/truthful_qa"]
    mmlu = [c["name"] for c in repos["cais/mmlu"]["configs"]]
    assert len(mmlu) == len(set(mmlu)) == 57 and {"abstract_algebra", "world_religions"} <= set(mmlu)
    assert repos["openai/gsm8k"]["configs"] == [{"name": "main", "kwargs": {}}]
    assert repos["truthfulqa/truthful_qa"]["configs"] == [{"name": "multiple_choice", "kwargs": {}}]
    assert repos["google/IFEval"]["configs"] == [{"name": None, "kwargs": {}}]
    assert repos["cais/mmlu"]["tasks"] == ["capabilities.lm_eval_tasks[0] 'mmlu'"]
    assert repos["google/IFEval"]["tasks"] == ["capabilities.lm_eval_tasks[3] 'ifeval'"]


def test_task_folder_group_resolves_and_bad_tasks_name_their_index(tmp_path):
    from distalign.evaluation.capabilities import CapabilityError, lm_eval_datasets, lm_eval_task_manager

    folder = make_task_folder(tmp_path)
    tm = lm_eval_task_manager([str(folder)])
    (repo,) = lm_eval_datasets(TASKS, [str(folder)], tm)
    assert repo["path"] == "org/tiny"
    assert repo["configs"] == [{"name": "easy", "kwargs": {}}, {"name": "hard", "kwargs": {}}]
    assert repo["tasks"] == ["capabilities.lm_eval_tasks[0] 'distalign_tiny'"]
    with pytest.raises(
        CapabilityError, match=r"capabilities.lm_eval_tasks\[1\] 'gsm8kk': not an lm-eval task.*gsm8k"
    ):
        lm_eval_datasets(["distalign_tiny", "gsm8kk"], [str(folder)], tm)
    with pytest.raises(
        CapabilityError,
        match=r"capabilities.lm_eval_tasks\[0\] 'distalign_tiny_python': subtask 'distalign_tiny_python' "
        r"names no Hugging Face dataset .*tiny_python.yaml.*custom_dataset",
    ):
        lm_eval_datasets(["distalign_tiny_python"], [str(folder)], tm)
    with pytest.raises(CapabilityError, match=r"capabilities.lm_eval_include\[0\] = .*not a directory"):
        lm_eval_task_manager([str(tmp_path / "absent")])


def test_tasks_wholly_in_the_include_folders_skip_the_shipped_index(tmp_path):
    """Local tasks resolve from the include folders alone; a task that reaches lm-eval's own tasks (a
    group member) or a tag (merged across folders by lm-eval) gets the full index."""
    from distalign.evaluation.capabilities import (
        _leaf_configs,
        _NotLocal,
        lm_eval_datasets,
        lm_eval_task_manager,
    )

    folder = make_task_folder(tmp_path)
    (folder / "tagged.yaml").write_text(
        "include: _tiny_template.yaml\ntask: distalign_tagged\ndataset_name: easy\ntag: [distalign_tag]\n"
    )
    local = lm_eval_task_manager([str(folder)], tasks=TASKS)
    assert "gsm8k" not in local.all_tasks and "distalign_tiny" in local.all_tasks
    (repo,) = lm_eval_datasets(TASKS, [str(folder)], local)
    assert repo["configs"] == [{"name": "easy", "kwargs": {}}, {"name": "hard", "kwargs": {}}]
    with pytest.raises(_NotLocal):
        _leaf_configs(local, "distalign_tag", "ref", local_only=True)
    (folder / "mixed_group.yaml").write_text(
        "group: distalign_mixed\ntask: [distalign_tiny_easy, gsm8k]\nmetadata: {version: 1.0}\n"
    )
    full = lm_eval_task_manager([str(folder)], tasks=["distalign_mixed"])
    assert "gsm8k" in full.all_tasks
    assert {r["path"] for r in lm_eval_datasets(["distalign_mixed"], [str(folder)], full)} == {
        "org/tiny",
        "openai/gsm8k",
    }


def test_prefetch_then_offline_load_and_clear_error_without_it(tmp_path, fake_hub):
    """The prefetch CLI fills HF_HOME from the Hub; lm-eval then builds the tasks offline, with no network.
    Without the prefetch, the same offline check fails with one message naming the task and the fix."""
    endpoint, requests, stop = fake_hub
    folder = make_task_folder(tmp_path)
    home = tmp_path / "hf"
    # Before any prefetch: the capabilities job's check, offline, fails with our message.
    empty = _offline_check(TASKS, [folder], tmp_path / "hf-empty")
    assert empty.returncode != 0
    last = empty.stderr.strip().splitlines()
    message = "\n".join(last[-3:])
    assert (
        "CapabilityError: capabilities.lm_eval_tasks[0] 'distalign_tiny': lm-eval cannot load it offline"
        in (message)
    ), empty.stderr[-3000:]
    assert "org/tiny (2 configs)" in message and "snakemake prefetch_models --cores 1" in message
    tb = empty.stderr[empty.stderr.rfind("Traceback") :]
    assert "site-packages/datasets" not in tb and "huggingface_hub" not in tb  # not a hub traceback

    # The two prefetch steps, as the rules run them (download mode).
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    from distalign.evaluation.capabilities import lm_eval_datasets

    (repo,) = lm_eval_datasets(TASKS, [str(folder)])
    (spec_dir / "dataset.json").write_text(json.dumps(repo))
    marker = tmp_path / "results" / "lm_eval" / "datasets" / "org--tiny.json"
    proc = _cli("dataset", spec_dir / "dataset.json", "--marker", marker, env=_env(home, endpoint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(marker.read_text())
    assert [(c["name"], c["splits"]) for c in info["configs"]] == [
        ("easy", {"test": 2}),
        ("hard", {"test": 3}),
    ]
    assert info["downloaded"] and Path(info["hf_datasets_cache"]) == home / "datasets"
    assert "GET /datasets/org/tiny/resolve/" + COMMIT + "/data/hard.jsonl" in requests

    (spec_dir / "tasks.json").write_text(json.dumps({"tasks": TASKS, "include": [str(folder)]}))
    tasks_marker = tmp_path / "results" / "lm_eval" / "tasks.json"
    proc = _cli("lm-eval-tasks", spec_dir / "tasks.json", "--marker", tasks_marker, env=_env(home, endpoint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(tasks_marker.read_text())["subtasks"] == {"distalign_tiny": 2}

    stop()  # no Hub from here on
    ok = _offline_check(TASKS, [folder], home)
    assert ok.returncode == 0, ok.stderr[-3000:]
    out = json.loads(ok.stdout.strip().splitlines()[-1])
    assert out["subtasks"] == {"distalign_tiny": ["distalign_tiny_easy", "distalign_tiny_hard"]}
    assert out["docs"] == {"distalign_tiny_easy": 2, "distalign_tiny_hard": 3}

    # Check mode (hf.prefetch false) only reads the cache: fine here, a clear error on an empty cache.
    proc = _cli("dataset", spec_dir / "dataset.json", "--no-download", "--marker", marker, env=_env(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(marker.read_text())["downloaded"] is False
    proc = _cli(
        "dataset", spec_dir / "dataset.json", "--no-download", "--marker", marker, env=_env(tmp_path / "x")
    )
    assert proc.returncode != 0
    assert "cannot find Hugging Face dataset 'org/tiny' (config 'easy')" in proc.stderr
    assert "needed by capabilities.lm_eval_tasks[0] 'distalign_tiny'" in proc.stderr
    assert "hf.prefetch is false" in proc.stderr


def test_a_failed_nltk_download_at_task_import_is_an_error(tmp_path, fake_hub):
    """IFEval downloads NLTK data when lm-eval imports its helpers; offline, nltk only prints an error.
    The check raises it instead."""
    endpoint, _, stop = fake_hub
    folder = make_task_folder(tmp_path)
    (folder / "helpers.py").write_text(
        "import nltk\n\nnltk.download('distalign_absent_resource', quiet=True)\n\n\n"
        "def doc_to_text(doc):\n    return doc['question']\n"
    )
    (folder / "tiny_nltk.yaml").write_text(
        "include: _tiny_template.yaml\ntask: distalign_tiny_nltk\ndataset_name: easy\n"
        "doc_to_text: !function helpers.doc_to_text\n"
    )
    home = tmp_path / "hf"
    from distalign.evaluation.capabilities import lm_eval_datasets

    (repo,) = lm_eval_datasets(["distalign_tiny_nltk"], [str(folder)])
    spec = tmp_path / "dataset.json"
    spec.write_text(json.dumps(repo))
    proc = _cli("dataset", spec, "--marker", tmp_path / "m.json", env=_env(home, endpoint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stop()
    proc = _offline_check(["distalign_tiny_nltk"], [folder], home)
    assert proc.returncode != 0
    assert re.search(
        r"CapabilityError: capabilities.lm_eval_tasks\[0\] 'distalign_tiny_nltk': "
        r"lm-eval cannot load it offline.*NLTK resource 'distalign_absent_resource' is not in nltk's data folders",
        proc.stderr,
    ), proc.stderr[-3000:]


def _jobs(stdout: str) -> Counter:
    """Job counts of a dry run's 'Job stats' table."""
    table = stdout[stdout.index("Job stats:") :].split("\n\n")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


def test_paper_dry_run_plans_capabilities_and_dataset_prefetch(repo, workdir, snakemake_run):
    """`snakemake -n --profile slurm all --configfile config/paper.yaml`: a capabilities job per paper model
    and table5 method, after the prefetch of the lm-eval datasets. The dry run reads no weights: the
    paper's models need not be in the cache (prepare_model and their prefetch jobs are only planned)."""
    import shutil

    from distalign.core.config import load_config

    shutil.copytree(repo / "slurm", workdir / "slurm")
    proc = snakemake_run(
        workdir, "-n", "--profile", "slurm", "all", "--configfile", "config/paper.yaml", timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    paper = load_config(repo / "config/config.yaml", repo / "config/paper.yaml")
    jobs = _jobs(proc.stdout)
    models, methods = paper["run"]["models"], paper["capabilities"]["methods"]
    assert jobs["capabilities"] == len(models) * len(methods) == 16 and jobs["table5"] == 1
    planned = set(re.findall(r"wildcards: dataset=uk-real, model=([\w.-]+), method=([\w-]+)\n", proc.stdout))
    assert {(m, x) for m in models for x in methods} <= planned
    prefetched = set(re.findall(r"output: results/lm_eval/datasets/([\w.-]+)\.json", proc.stdout))
    assert prefetched == {"cais--mmlu", "openai--gsm8k", "truthfulqa--truthful_qa", "google--IFEval"}
    assert jobs["prefetch_lm_eval_dataset"] == 4 and jobs["prefetch_lm_eval_tasks"] == 1
    caps = re.search(r"rule capabilities:\n\s+input: ([^\n]+)", proc.stdout)[1]
    assert "results/lm_eval/datasets/cais--mmlu.json" in caps and "results/lm_eval/tasks.json" in caps

    # Every job that asks for a GPU gets its size from slurm/config.yaml's set-resources, not the rule's CPU
    # defaults (a capabilities job of an 8B model with the rule's 8 GB would die on the cluster).
    profile = yaml.safe_load((repo / "slurm" / "config.yaml").read_text())
    blocks = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=\n\n)", proc.stdout, re.M | re.S)
    gpu_rules = {rule for rule, body in blocks if re.search(r"resources: .*\bgpu=[1-9]", body)}
    assert {"train", "generate", "capabilities"} <= gpu_rules
    assert gpu_rules <= set(profile["set-resources"]), gpu_rules - set(profile["set-resources"])
    for rule, body in blocks:
        if rule == "capabilities":
            resources = re.search(r"resources: ([^\n]*)", body)[1]
            assert re.search(r"\bgpu=1\b", resources) and re.search(r"\bmem_mb=64000\b", resources), body


def test_prefetch_models_fetches_lm_eval_datasets_only_for_table5(repo, workdir, snakemake_run):
    """prefetch_models gets the lm-eval jobs when `all` builds table5 with tasks over hub datasets, not
    for the default's local tasks, and not without table5."""
    proc = snakemake_run(workdir, "-n", "prefetch_models", "--configfile", "config/config.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "prefetch_lm_eval" not in proc.stdout  # distalign_general_mc / distalign_heldout read local files
    overlay = workdir / "config" / "lm.yaml"
    overlay.write_text(yaml.safe_dump({"capabilities": {"lm_eval_tasks": ["gsm8k"]}}))
    proc = snakemake_run(workdir, "-n", "prefetch_models", "--configfile", "config/config.yaml", str(overlay))
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["prefetch_lm_eval_dataset"] == 1 and jobs["prefetch_lm_eval_tasks"] == 1
    assert "output: results/lm_eval/datasets/openai--gsm8k.json" in proc.stdout
    overlay.write_text(
        yaml.safe_dump({"capabilities": {"lm_eval_tasks": ["gsm8k"]}, "report": {"artefacts": ["table1"]}})
    )
    proc = snakemake_run(workdir, "-n", "prefetch_models", "--configfile", "config/config.yaml", str(overlay))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "prefetch_lm_eval" not in proc.stdout


def test_missing_lm_eval_stops_the_dag_naming_table5(tmp_path, workdir, snakemake_run):
    """Without lm-eval in Snakemake's environment, a capabilities job stops the DAG."""
    fake = tmp_path / "no_lm_eval" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('lm_eval hidden by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = snakemake_run(
        workdir,
        "-n",
        "results/tables/table5.csv",
        env=env,
    )
    assert proc.returncode != 0
    assert "table5 (the capabilities jobs) runs lm-evaluation-harness" in proc.stdout
    assert "but it is not installed" in proc.stdout
    assert "pip install 'lm-eval[ifeval]==0.4.13'" in proc.stdout
    assert "Job stats:" not in proc.stdout  # stopped before any job was planned
