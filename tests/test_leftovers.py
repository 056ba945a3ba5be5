"""Leftovers of killed jobs: a real SIGKILL inside an atomic writer or a vLLM job's scratch folder leaves
its temporary entry behind; the next write / job removes it, and never an entry a live writer holds."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from helpers import SMOL_VOCAB, run_python, save_model_dir, tiny_llama, vllm_job, wait_for_file

from distalign.core.io import atomic_dir, atomic_path, write_text


def _tmp_siblings(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


# ------------------------------------------------------------------------------ atomic writers


def test_sigkilled_atomic_file_write_is_cleaned_by_the_next_write(tmp_path):
    out = tmp_path / "results" / "gen.jsonl"
    proc = run_python(f"""
        import os, signal
        from distalign.core.io import atomic_path
        with atomic_path({str(out)!r}) as tmp:
            tmp.write_text("half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = _tmp_siblings(out.parent, out.name)
    assert len(left) == 1 and left[0].read_text() == "half a file" and not out.exists()
    other = tmp_path / "results" / ".gen.jsonl.b.x1.tmp"  # not a temp of gen.jsonl: never touched
    other.write_text("x")

    write_text(out, "complete\n")
    assert out.read_text() == "complete\n"
    assert _tmp_siblings(out.parent, out.name) == [other]


def test_sigkilled_atomic_dir_write_is_cleaned_by_the_next_write(tmp_path):
    out = tmp_path / "adapters" / "ours"
    proc = run_python(f"""
        import os, signal
        from distalign.core.io import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"0" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = _tmp_siblings(out.parent, out.name)
    assert (left / "adapter_model.safetensors").exists()

    with atomic_dir(out) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]
    assert _tmp_siblings(out.parent, out.name) == []


def test_two_writers_of_one_path_in_one_process_keep_their_temporaries(tmp_path):
    out = tmp_path / "x.json"
    with atomic_path(out) as first:
        first.write_text("first")
        with atomic_path(out) as second:  # must not take the first writer's file for a leftover
            second.write_text("second")
            assert first.exists() and second.exists() and first != second
        assert out.read_text() == "second" and first.exists()
    assert out.read_text() == "first" and _tmp_siblings(tmp_path, "x.json") == []


def test_a_live_writer_in_another_process_is_left_alone(tmp_path):
    out, ready, go = tmp_path / "cache.json", tmp_path / "ready", tmp_path / "go"
    proc = run_python(
        f"""
        import time
        from pathlib import Path
        from distalign.core.io import atomic_path
        with atomic_path({str(out)!r}) as tmp:
            tmp.write_text("other process")
            Path({str(ready)!r}).write_text(str(tmp))
            while not Path({str(go)!r}).exists():
                time.sleep(0.02)
        """,
        wait=False,
    )
    assert wait_for_file(ready, proc), proc.communicate()
    theirs = Path(ready.read_text())
    write_text(out, "this process")  # cleans stale siblings first: theirs is locked, so it stays
    assert theirs.exists() and out.read_text() == "this process"
    go.write_text("")
    assert proc.wait(timeout=60) == 0, proc.communicate()
    assert out.read_text() == "other process" and _tmp_siblings(tmp_path, "cache.json") == []


# ------------------------------------------------------------------- $TMPDIR scratch of vLLM jobs


def _fake_merge_and_worker(monkeypatch, seen: dict):
    """execute() with the merge and the worker replaced: records what the worker was given."""
    from distalign.generation import runner as g

    def merge(model_dir, adapter, out_dir):
        Path(out_dir).mkdir()
        (Path(out_dir) / "model.safetensors").write_bytes(b"w" * 1024)
        return Path(out_dir)

    def worker(job, python):
        seen["model_dir"] = job.model_dir
        seen["existed"] = (Path(job.model_dir) / "model.safetensors").exists()
        return [{"ok": True}]

    monkeypatch.setattr(g, "merge_adapter", merge)
    monkeypatch.setattr(g, "vllm_importable", lambda: False)
    monkeypatch.setattr(g, "resolve_vllm_python", lambda configured: "python")
    monkeypatch.setattr(g, "run_in_worker", worker)


def test_sigkilled_scratch_is_removed_by_the_next_execute(tmp_path, monkeypatch):
    from distalign.generation.runner import execute

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = run_python(
        """
        import os, signal
        from distalign.core.scratch import scratch_dir
        with scratch_dir() as d:
            (d / "merged").mkdir()
            (d / "merged" / "model.safetensors").write_bytes(b"w" * 4096)
            (d / "job.json").write_text("{}")
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        env={"TMPDIR": str(tmpdir)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (stale,) = tmpdir.glob("distalign-scratch-*")
    legacy = tmpdir / "distalign-merged-k2x9_q7a"  # a TemporaryDirectory of an earlier version, killed...
    legacy.mkdir()
    day_old = time.time() - 25 * 3600
    os.utime(legacy, (day_old, day_old))  # ...a day ago
    recent_legacy = tmpdir / "distalign-vllm-u81_zzq0"  # may belong to an old version's running job
    recent_legacy.mkdir()
    unrelated = tmpdir / "distalign-scratchpad"
    unrelated.mkdir()

    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    seen: dict = {}
    _fake_merge_and_worker(monkeypatch, seen)
    assert execute(vllm_job(adapter="adapter"), vllm_lora="merge") == [{"ok": True}]
    assert seen["existed"] and Path(seen["model_dir"]).is_relative_to(tmpdir)
    assert not stale.exists() and not legacy.exists() and unrelated.exists() and recent_legacy.exists()
    assert not Path(seen["model_dir"]).exists(), "this job's merged weights are removed when it ends"
    assert sorted(p.name for p in tmpdir.iterdir()) == ["distalign-scratchpad", "distalign-vllm-u81_zzq0"]


def test_execute_cleans_even_when_it_merges_nothing(tmp_path, monkeypatch):
    from distalign.generation.runner import execute

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "distalign-scratch-abc_123"  # unlocked: its job was killed
    stale.mkdir()
    (stale / "result.json").write_text("[]")
    seen: dict = {}
    _fake_merge_and_worker(monkeypatch, seen)
    assert execute(vllm_job()) == [{"ok": True}] and seen["model_dir"] == "model"
    assert not stale.exists()


def test_a_running_jobs_scratch_is_left_alone(tmp_path, monkeypatch):
    from distalign.core.scratch import remove_stale_scratch

    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = run_python(
        f"""
        import time
        from pathlib import Path
        from distalign.core.scratch import scratch_dir
        with scratch_dir() as d:
            Path({str(ready)!r}).write_text(str(d))
            while not Path({str(go)!r}).exists():
                time.sleep(0.02)
        """,
        env={"TMPDIR": str(tmp_path)},
        wait=False,
    )
    assert wait_for_file(ready, proc), proc.communicate()
    live = Path(ready.read_text())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert remove_stale_scratch() == [] and live.exists()
    go.write_text("")
    assert proc.wait(timeout=60) == 0, proc.communicate()
    assert not live.exists()


@pytest.mark.slow
def test_sigkilled_vllm_job_leaves_merged_weights_the_next_job_removes(
    tmp_path, embedded_model_dir, monkeypatch
):
    """The real merge (tiny random Llama + LoRA, ~1 MB of weights): the job is SIGKILLed while its worker
    would run; the merged model is left in $TMPDIR; the next execute() removes it before doing anything."""
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(SMOL_VOCAB)
    model = save_model_dir(tmp_path / "tiny", base, embedded_model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = run_python(
        f"""
        import os, signal
        from helpers import vllm_job
        from distalign.generation import runner as g

        def killed(job, python):  # SIGKILL where the vLLM worker would be running
            os.kill(os.getpid(), signal.SIGKILL)

        g.vllm_importable = lambda: False
        g.resolve_vllm_python = lambda configured: "python"
        g.run_in_worker = killed
        g.execute(vllm_job({str(model)!r}, {str(tmp_path / "adapter")!r}), vllm_lora="merge")
        """,
        env={"TMPDIR": str(tmpdir)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (stale,) = tmpdir.glob("distalign-scratch-*")
    assert (stale / "merged" / "model.safetensors").stat().st_size > 100_000
    assert json.loads((stale / "merged" / "distalign_model.json").read_text())["merged_adapter"]

    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    seen: dict = {}
    _fake_merge_and_worker(monkeypatch, seen)
    from distalign.generation.runner import execute

    execute(vllm_job(adapter="adapter"), vllm_lora="merge")
    assert not stale.exists() and list(tmpdir.iterdir()) == []


# ------------------------------------------------------------------- training checkpoints (kept)


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    """HF writes a checkpoint's trainer_state.json last: a checkpoint killed before it, or with it cut
    short, or without optimizer state, is deleted; the newest complete one is resumed."""
    pytest.importorskip("safetensors")
    import torch
    from safetensors.torch import save_file

    from distalign.training.runner import last_valid_checkpoint

    stage = tmp_path / "ours.work" / "pref"

    def checkpoint(step: int, state: str | None = '{"global_step": 0}', optimizer: bytes = b"o") -> Path:
        c = stage / f"checkpoint-{step}"
        c.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(c / "adapter_model.safetensors"))
        (c / "optimizer.pt").write_bytes(optimizer)
        (c / "scheduler.pt").write_bytes(b"s")
        if state is not None:
            (c / "trainer_state.json").write_text(state)
        return c

    good = checkpoint(50)
    no_state = checkpoint(100, state=None)  # killed while writing optimizer / rng state
    cut_state = checkpoint(150, state='{"glob')  # killed while writing trainer_state.json
    empty_opt = checkpoint(200, optimizer=b"")
    assert last_valid_checkpoint(stage) == str(good)
    assert good.exists() and not any(p.exists() for p in (no_state, cut_state, empty_opt))
