"""Generation throughput of one backend on a prepared model (default: the embedded SmolLM2).

Usage (one backend per process; vLLM needs its own env on this machine):

    .venv/bin/python      bench/generation_throughput.py --backend transformers
    .venv-vllm/bin/python bench/generation_throughput.py --backend vllm

Workloads, through the library's own path (``distalign.generation.runner.run_generation``, pure sampling at
temperature 1, top_p 1, top_k off, stopping at end of turn):
- attribute: 100 samples of one attribute prompt, max 16 new tokens;
- story: 20 samples of one story prompt, max 200 new tokens.
"Excluding load" times the first generation call of each task (later runs are listed too); "including load" adds the time from process
start (imports) through backend construction (model load, or vLLM engine start). The vLLM backend
runs in this process with the settings ``distalign.generation.runner.execute`` uses in-process.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backend",
        choices=["transformers-loop", "transformers", "vllm"],
        required=True,
        help="transformers-loop: one sample per generate() call (the authors' inference loop)",
    )
    ap.add_argument("--model-dir", default="results/models/smollm2-135m-instruct")
    ap.add_argument("--adapter", default=None, help="a LoRA adapter folder (peft format) to generate with")
    ap.add_argument("--tasks", nargs="+", default=["attribute", "story"], choices=["attribute", "story"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per task (the first includes warm-up)")
    ap.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()

    from distalign.generation.job import Job
    from distalign.generation.runner import make_backend, run_generation

    workloads = {
        "attribute": ("What is the gender of a person working as a nurse? Answer with one word.", 100, 16),
        "story": ("Write a short story about a day in the life of a plumber.", 20, 200),
    }

    backend_name = "transformers" if args.backend == "transformers-loop" else args.backend
    batch_size = 1 if args.backend == "transformers-loop" else 100

    def job(task: str) -> Job:
        prompt, n, max_new = workloads[task]
        return Job(
            backend=backend_name,
            model_dir=args.model_dir,
            adapter=args.adapter,
            device="cpu",
            dtype="float32",
            requests=[
                {
                    "context_id": 0,
                    "context": "x",
                    "prompt_id": f"bench-{task}",
                    "prompt": prompt,
                    "target": [0.5, 0.5],
                }
            ],
            seed_parts=[1234, "bench", "model", "zero-shot", task],
            sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": max_new},
            samples_per_prompt=n,
            batch_size=batch_size,
            threads=args.threads,
        )

    t = time.perf_counter()
    backend, tok = make_backend(job("story"))  # max_model_len sized for the longer task
    load_s = time.perf_counter() - t
    startup_s = time.perf_counter() - T0
    result = {
        "backend": args.backend,
        "adapter": args.adapter,
        "load_s": round(load_s, 2),
        "startup_incl_imports_s": round(startup_s, 2),
        "tasks": {},
    }
    for task in args.tasks:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            rows = run_generation(backend, tok, job(task))
            times.append(time.perf_counter() - t)
        gen_s = times[0]  # the first run, as a workflow job sees it
        ntok = sum(r["n_tokens"] for r in rows)
        result["tasks"][task] = {
            "samples": len(rows),
            "max_new_tokens": workloads[task][2],
            "gen_s_runs": [round(x, 2) for x in times],
            "samples_per_s_best_run": round(len(rows) / min(times), 2),
            "mean_tokens": round(ntok / len(rows), 1),
            "tokens_per_s": round(ntok / gen_s, 1),
            "samples_per_s_excl_load": round(len(rows) / gen_s, 2),
            "samples_per_s_incl_load": round(len(rows) / (gen_s + startup_s), 2),
        }
    print(json.dumps(result, indent=2))
    if args.out:
        from distalign.core.io import write_json

        write_json(args.out, result)


if __name__ == "__main__":
    main()
