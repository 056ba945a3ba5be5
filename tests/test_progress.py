"""Progress lines of long jobs: the helper on a fake clock, the console/log split, the vLLM worker's
relay, and a real (tiny) generation and training callback that report done/total, rate and time left."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import SMOL_VOCAB, run_python, save_model_dir, tiny_llama, vllm_job

from distalign.core import progress as progress_mod
from distalign.core.progress import Progress, format_duration, format_rate, plural


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture()
def lines(caplog):
    """The messages that ``logging.getLogger('test.progress')`` logged."""
    caplog.set_level(logging.INFO, logger="test.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "test.progress"]


# ------------------------------------------------------------------------------------- the helper


def test_formatting():
    assert [format_duration(s) for s in (0, 44.6, 60, 143, 3599, 3600, 3930)] == [
        "0 s",
        "45 s",
        "1 min 0 s",
        "2 min 23 s",
        "59 min 59 s",
        "1 h 00 min",
        "1 h 05 min",
    ]
    assert format_rate(9.13, "row") == "9.1 rows/s"
    assert format_rate(250.4, "row") == "250 rows/s"
    assert format_rate(0.4, "step") == "2.5 s/step"
    assert [plural(u) for u in ("row", "story", "day", "rows")] == ["rows", "stories", "days", "rows"]


def test_lines_at_most_every_interval_and_a_final_line(lines):
    clock = Clock()
    p = Progress(
        2500, "generate uk-real/m/ours/attribute", logging.getLogger("test.progress"), every_s=30, clock=clock
    )
    # 100 rows every 10 s: 10 rows/s; lines at 30 s, 60 s, ... and the final one at 250 s
    for _ in range(25):
        clock.t += 10
        p.update(100)
    got = lines()
    assert got[0] == "generate uk-real/m/ours/attribute: 300/2500 rows (12%), 10.0 rows/s, ~3 min 40 s left"
    assert got[1].startswith("generate uk-real/m/ours/attribute: 600/2500 rows (24%)")
    assert len(got) == 8 + 1  # 30, 60, ..., 240 s, then the end
    assert (
        got[-1] == "generate uk-real/m/ours/attribute: 2500/2500 rows (100%), done in 4 min 10 s, 10.0 rows/s"
    )
    p.finish()  # already finished: nothing more
    assert len(lines()) == 9


def test_the_interval_counts_from_the_last_line_not_from_each_update(lines):
    clock = Clock()
    p = Progress(100, "x", logging.getLogger("test.progress"), every_s=30, clock=clock, unit="story")
    for dt in (29, 2, 10, 19, 1):  # t = 29, 31 (line), 41, 60, 61 (line)
        clock.t += dt
        p.update(1)
    got = lines()
    assert [g.split(":")[1].split(",")[0].strip() for g in got] == [
        "2/100 stories (2%)",
        "5/100 stories (5%)",
    ]
    assert got[0].endswith("left") and "s/story" in got[0]  # 2 stories in 31 s: 15.5 s a story


def test_short_loop_logs_only_its_final_line_and_a_failed_loop_none(lines):
    clock = Clock()
    log = logging.getLogger("test.progress")
    with Progress(3, "short", log, clock=clock) as p:
        clock.t += 1
        p.update(2)
    assert lines() == ["short: 2/3 rows (66%), done in 1 s, 2.0 rows/s"]  # finished early: exact count shown
    with pytest.raises(RuntimeError), Progress(3, "failing", log, clock=clock) as p:
        p.update(1)
        raise RuntimeError("boom")
    assert not any(x.startswith("failing") for x in lines())


def test_resumed_loop_rates_only_the_work_it_did_and_shows_detail(lines):
    clock = Clock()
    p = Progress(
        200,
        "train d/m/ours sft",
        logging.getLogger("test.progress"),
        unit="step",
        initial=100,
        every_s=30,
        clock=clock,
    )
    p.detail = "loss 1.23"
    clock.t += 2.5
    p.set(101)
    clock.t += 47.5
    p.set(120)  # 19 steps in 47.5 s since the first: 2.5 s a step, 80 steps left: 200 s
    assert lines() == ["train d/m/ours sft: 120/200 steps (60%), 2.5 s/step, ~3 min 20 s left, loss 1.23"]


def test_rate_of_recent_updates_ignores_a_slow_start(lines):
    """vLLM-like: the first item after a minute, then 10 a second. No estimate from one update; then
    the rate of the last two minutes (the final line: the mean of the whole loop)."""
    clock = Clock()
    p = Progress(3000, "v", logging.getLogger("test.progress"), every_s=30, window_s=120, clock=clock)
    clock.t += 60
    p.update(1)
    assert lines() == ["v: 1/3000 rows (0%)"]
    for _ in range(240):  # 0.5 s apart: 10 rows/s for 2 minutes
        clock.t += 0.5
        p.update(5)
    assert lines()[-1] == "v: 1201/3000 rows (40%), 10.0 rows/s, ~3 min 0 s left"
    for _ in range(120):  # slower for a minute: 4 rows/s; the window still holds a minute of 10/s
        clock.t += 0.5
        p.update(2)
    assert lines()[-1] == "v: 1441/3000 rows (48%), 7.0 rows/s, ~3 min 43 s left"
    p.finish()
    assert lines()[-1] == "v: 1441/3000 rows (48%), done in 4 min 0 s, 6.0 rows/s"


def test_thread_safe_counting(lines):
    from concurrent.futures import ThreadPoolExecutor

    p = Progress(4000, "threads", logging.getLogger("test.progress"), every_s=3600)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: p.update(1), range(4000)))
    assert p.done == 4000 and len(lines()) == 1 and lines()[0].startswith("threads: 4000/4000 rows (100%)")


# ----------------------------------------------------------------------------- console and log file


def test_file_only_records_and_vllm_records_stay_off_the_console(script_logging):
    from distalign.core.scripting import FILE_ONLY

    read = script_logging
    logging.getLogger("distalign.x").info("for both")
    logging.getLogger("distalign.x").info("file only", extra=FILE_ONLY)
    logging.getLogger("vllm.engine").info("engine step")
    console, logfile = read()
    assert "for both" in console and "file only" not in console and "engine step" not in console
    assert all(s in logfile for s in ("for both", "file only", "engine step"))


def _fake_worker(tmp_path, body: str) -> str:
    """An executable standing in for the vLLM env's python (``python -m distalign.generation.vllm_worker job res``)."""
    exe = tmp_path / "fake-python"
    exe.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return str(exe)


def test_worker_progress_reaches_console_and_log_vllm_noise_the_log_only(
    tmp_path, script_logging, monkeypatch
):
    from distalign.generation.vllm_backend import run_in_worker

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exe = _fake_worker(
        tmp_path,
        """\
        echo "(MainProcess pid=1) INFO 12-01 09:01:49 [api_utils.py:286] non-default args: {}" >&2
        echo "2026-01-01 00:00:01,000 INFO vllm.v1.engine: engine noise" >&2
        echo "Processed prompts:  50%|#####     | 1/2"
        echo "2026-01-01 00:00:02,000 INFO distalign.generate: generate d/m/zero-shot/attribute: 2/2 rows (100%)" >&2
        echo "2026-01-01 00:00:02,500 WARNING distalign.models: a note of ours" >&2
        echo "parent $DISTALIGN_PARENT_PID" >&2
        echo '[{"row": 1}]' > "$4"
        """,
    )
    read = script_logging
    assert run_in_worker(vllm_job("m", method="zero-shot"), exe) == [{"row": 1}]
    console, logfile = read()
    assert "generate d/m/zero-shot/attribute: 2/2 rows (100%)" in console
    assert "WARNING distalign.models: a note of ours" in console
    for noise in ("non-default args", "engine noise", "Processed prompts", "parent "):
        assert noise not in console
        assert noise in logfile
    assert f"parent {os.getpid()}" in logfile
    assert "generate d/m/zero-shot/attribute: 2/2 rows (100%)" in logfile
    assert not list(tmp_path.glob("distalign-scratch-*")), "the worker's scratch folder is removed"


def test_failing_worker_names_its_last_output(tmp_path, monkeypatch):
    from distalign.generation.job import GenerationError
    from distalign.generation.vllm_backend import run_in_worker

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exe = _fake_worker(
        tmp_path,
        """\
        echo "Traceback: something broke in vLLM" >&2
        exit 7
        """,
    )
    with pytest.raises(GenerationError, match=r"exit code 7(.|\n)*something broke in vLLM"):
        run_in_worker(vllm_job("m", method="zero-shot"), exe)
    assert not list(tmp_path.glob("distalign-scratch-*"))


def test_vllm_bar_counts_finished_requests_not_rendered_prompts(lines):
    """vLLM builds bars from the class twice: over the prompts it renders (tqdm's iteration calls
    update) and with total = requests, updated per finished request. Only the second counts."""
    from distalign.generation.vllm_backend import _tqdm_counting_into

    p = Progress(5, "x", logging.getLogger("test.progress"), every_s=3600)
    bar_cls = _tqdm_counting_into(p)
    assert list(bar_cls(range(5), desc="Rendering prompts", mininterval=0, miniters=1)) == list(range(5))
    assert p.done == 0
    bar = bar_cls(total=5, desc="Processed prompts", dynamic_ncols=True, postfix="speed")
    for i in range(5):
        assert bar.format_dict["elapsed"] >= 0  # what vLLM reads for its speed postfix
        bar.update(1)
        assert p.done == i + 1
    bar.close()
    assert p.finished and lines()[-1].startswith("x: 5/5 rows (100%), done in")


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_worker_exits_when_its_parent_is_killed(tmp_path):
    """A parent SIGKILLed mid-job: its worker (here a sleeping stand-in) exits instead of running on."""
    child = (
        "import sys, time; from distalign.generation.vllm_worker import exit_with_parent; "
        "exit_with_parent(int(sys.argv[1]), 0.1); time.sleep(60)"
    )
    parent = textwrap.dedent(f"""\
        import os, signal, subprocess, sys, time
        # its output goes to this process through a pipe, as the worker's does: broken when this dies
        p = subprocess.Popen([sys.executable, "-c", {child!r}, str(os.getpid())], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        print(p.pid, flush=True)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    proc = run_python(parent, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    worker = int(proc.stdout.split()[0])
    deadline = time.time() + 10
    while _state(worker) not in (None, "Z") and time.time() < deadline:
        time.sleep(0.1)
    assert _state(worker) in (None, "Z"), "the orphaned worker is still running"


# ------------------------------------------------------------------------------ real jobs, tiny sizes


def test_train_callback_logs_steps_rate_and_time_left(caplog, monkeypatch):
    """The training callback: metrics per logged step to the file only, progress lines with rate/ETA."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from distalign.training.runner import _LogCallback

    clock = Clock()
    monkeypatch.setattr(progress_mod, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="distalign.train")
    cb = _LogCallback("pref", "uk-real/tiny/ours")
    state = SimpleNamespace(global_step=10, max_steps=50)
    cb.on_train_begin(None, state, None)
    for step in range(11, 51):
        clock.t += 2.0
        state.global_step = step
        cb.on_step_end(None, state, None)
        if step % 5 == 0:
            cb.on_log(None, state, None, logs={"loss": 0.5 + 1 / step})
    cb.on_train_end(None, state, None)
    records = [r for r in caplog.records if r.name == "distalign.train"]
    metric = [r for r in records if r.getMessage().startswith("[pref] step")]
    prog = [r.getMessage() for r in records if r.getMessage().startswith("train uk-real/tiny/ours pref")]
    assert len(metric) == 8 and all(getattr(r, "console", True) is False for r in metric)
    assert prog[0] == "train uk-real/tiny/ours pref: 25/50 steps (50%), 2.0 s/step, ~50 s left, loss 0.55"
    assert (
        prog[-1]
        == "train uk-real/tiny/ours pref: 50/50 steps (100%), done in 1 min 20 s, 2.0 s/step, loss 0.52"
    )
    assert len(prog) == 3  # 25 and 40 steps (every 30 s), and the end with the last step's loss


def test_llm_judge_logs_stories_done_rate_and_time_left(caplog, monkeypatch, config):
    """The LLM judge's worker threads count into one progress: a line per story at interval 0, in
    order of completion, the last one the final line."""
    from types import SimpleNamespace

    from distalign.core.attributes import attribute_of_dataset
    from distalign.evaluation.judges import LLMJudge

    attribute = attribute_of_dataset(config, "uk-real")
    reply = SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=attribute.labels[0]))])
    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=lambda **kw: reply)))
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="distalign.judge")
    judge = LLMJudge(attribute, model="stub", concurrency=3)
    judge._client = client
    out = judge.judge([f"story {i}" for i in range(7)])
    assert [j.label for j in out] == [attribute.classes[0].name] * 7
    got = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LLM judge stub")]
    assert [g.split(": ")[1].split(" (")[0] for g in got] == [f"{i}/7 stories" for i in range(1, 8)]
    assert got[-1].startswith(f"LLM judge stub ({attribute.name}): 7/7 stories (100%), done in")


def test_paraphraser_says_when_it_waits_to_retry(tmp_path, caplog):
    """A transient endpoint error is retried after a pause that is logged, not silent."""
    from types import SimpleNamespace

    import openai

    from distalign.data.prompts import OpenAIParaphraser

    calls = []

    def create(**kw):
        calls.append(kw)
        if len(calls) == 1:
            raise openai.APIConnectionError(request=None)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="a reply"))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    para = OpenAIParaphraser(
        model="stub",
        base_url=None,
        api_key_env="UNUSED",
        cache=tmp_path / "cache.jsonl",
        backoff=0.01,
        client=client,
    )
    caplog.set_level(logging.INFO, logger="distalign.prompts")
    assert para._complete({"model": "stub", "messages": []}) == "a reply" and len(calls) == 2
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "distalign.prompts"]
    assert msg == "paraphraser request failed (APIConnectionError); retry 1/5 in 0.0 s"


@pytest.mark.slow
def test_generation_job_logs_progress_to_console_and_log(
    embedded_model_dir, tmp_path, config, script_logging, monkeypatch
):
    """A real transformers-backend generation (tiny random model, 6 rows in batches of 2) logs a line per
    batch when the interval is 0, with done/total and the time left, in the log file and on the console."""
    from distalign.core.config import GenerationSpec
    from distalign.generation.runner import generate

    tiny = save_model_dir(tmp_path / "tiny", tiny_llama(SMOL_VOCAB), embedded_model_dir)
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    config["generation"].update(
        backend="transformers",
        batch_size=2,
        samples_per_prompt=2,
        max_new_tokens={"attribute": 3, "story": 3},
    )
    reqs = [
        {
            "context_id": i,
            "context": f"c{i}",
            "prompt_id": f"test-{i}",
            "prompt": f"Who is person {i}?",
            "target": [0.5, 0.5],
        }
        for i in range(3)
    ]
    spec = GenerationSpec.from_config(config, "uk-real", "zero-shot")
    rows = generate(
        reqs, spec=spec, dataset="uk-real", model="tiny", task="attribute", model_dir=tiny, threads=1
    )
    assert len(rows) == 6
    console, logfile = script_logging()
    for text in (console, logfile):
        got = [
            ln.split("distalign.generate: ")[1]
            for ln in text.splitlines()
            if "generate uk-real/tiny/zero-shot/attribute:" in ln
        ]
        assert [g.split(",")[0].split(": ")[1] for g in got] == [
            "2/6 rows (33%)",
            "4/6 rows (66%)",
            "6/6 rows (100%)",
        ], got
        # no estimate from the first batch alone (the rate starts at the first update), then one
        assert got[0].endswith("(33%)") and got[1].endswith(" left") and "done in" in got[-1]


@pytest.mark.slow
def test_training_job_console_has_progress_lines_and_no_metric_dicts(
    tmp_path, repo, config, embedded_model_dir, script_logging, capsys, monkeypatch
):
    """A real (tiny) IFT run as the train script runs it: progress lines with steps done/total on the
    console and in the log, the per-step metrics in the log only, nothing printed to stdout by HF."""
    from test_train_integration import _tiny_setup, _train_kwargs

    from distalign.training.runner import train_adapter

    model = tiny_llama(SMOL_VOCAB)  # the folder's name is the model's name in the progress lines
    model_dir = save_model_dir(tmp_path / "tiny-llama", model, embedded_model_dir, name="tiny-llama")
    _tiny_setup(tmp_path, repo, config, "nll")  # 24 SFT rows, batch 8: 3 steps
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    train_adapter(**_train_kwargs(tmp_path, config, model_dir, tmp_path / "adapter", method="ift"))
    console, logfile = script_logging()
    assert "{'loss'" not in capsys.readouterr().out
    for text in (console, logfile):
        got = [
            ln.split("distalign.train: ")[1]
            for ln in text.splitlines()
            if "train uk-real/tiny-llama/ift sft:" in ln
        ]
        assert [g.split(": ")[1].split(" (")[0] for g in got] == ["1/3 steps", "2/3 steps", "3/3 steps"], got
        assert "left" in got[1] and "done in" in got[2] and "loss" in got[2]
    assert "[sft] step 3/3 {'loss'" in logfile and "[sft] step" not in console
