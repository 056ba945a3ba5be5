"""Test-time generation (and the internal probe read from it), with a transformers and a vLLM backend.

One interface, two backends (config ``generation.backend``):

- ``transformers``: batched, left-padded ``model.generate`` (prompts are built as token ids and
  padded by hand, so a batch gives the same greedy answer as one prompt alone).
- ``vllm``: the offline ``vllm.LLM`` engine (``enforce_eager`` on CPU, LoRA through
  ``LoRARequest``). If the running interpreter cannot ``import vllm`` (on this machine vLLM
  lives in ``.venv-vllm`` because its numpy pin clashes with Snakemake's SLURM plugin), the whole
  job runs in ``python -m distalign.generation.vllm_worker`` of ``generation.vllm_python``; the two
  processes exchange JSON files. On a GPU cluster vLLM is in the job's conda env and runs in
  this process.

Decisions:

- **Everything is built at the token-id level.** Prompts are ``chat.prompt_ids`` /
  ``chat.steered_prompt_ids``; the recorded response is the decoded *generated* ids only, so
  the steering token is excluded by position and a digit the model writes stays in the answer
  (the authors' ``.replace("0", "")`` deleted digits from stories).
- **Two-step steering (methods of kind ``ours``).** Step 1: the full-vocabulary log-probs of
  the K steering tokens at the first assistant position, renormalised over the K tokens (the
  restricted softmax at temperature 1). The draw is made by this module, not by the engine,
  from a ``random.Random`` seeded per (prompt, sample): both backends share the sampler, so they
  pick the same token whenever their probabilities agree. Step 2: the token is placed as
  ``training.steering_placement`` says and the answer is sampled with the configured settings.
  vLLM's step 1 uses ``allowed_token_ids`` + ``logprob_token_ids`` (= the K steering ids) and
  ``max_tokens=1``: vLLM returns *raw* (pre-mask) log-probs, so asking for the top-K would
  not always include the steering tokens, while ``logprob_token_ids`` always returns them.
- **Seeds.** Every seed is ``prompts.derive_seed`` of the config seed and the names of what is
  sampled (dataset, model, method, task, then prompt id + sample index or batch index). The
  transformers backend seeds each batch (``torch.manual_seed``) from its batch index, so a batch
  does not depend on the batches before it; vLLM gets one request per (prompt, sample), with
  ``n=1`` and a seed from (prompt id, sample), instead of ``n=samples_per_prompt`` (vLLM would
  seed the children ``seed + i``): a sample then does not depend on how many are drawn, and
  prefix caching still computes each shared prompt once. Each row records the seed it used.
- **vLLM on CPU** runs with ``enforce_eager``, ``VLLM_CPU_KVCACHE_SPACE=2`` (GiB) unless set,
  the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and chunked prefill off
  (vLLM 0.32 crashes rewinding a CPU generator when a seeded prompt is split across steps).
- **Sampling settings** are passed explicitly to both engines (the model's own
  ``generation_config.json`` defaults are ignored): temperature (0 = greedy), top_p, top_k
  (0 = off; vLLM ``-1``), max_new_tokens per task, no repetition penalty.
- **Steering guidance** (``methods.<m>.steering_guidance``, ``distalign.generation.guidance``): the answer
  after the drawn token is sampled with the other tokens' branches contrasted at every step. It
  needs logits from a second batch of contexts, which vLLM's sampler cannot mix in, so a guided
  job runs on the transformers backend whatever ``generation.backend`` says (and says so in its log).
- **Progress** (``distalign.core.progress``): sampling logs ``generate <dataset>/<model>/<method>/<task>:
  done/total rows, rate, time left`` at most every 30 s and at the end (the steering step likewise,
  per prompt); the transformers backend counts finished batches, vLLM finished
  requests (through ``LLM.generate``'s ``use_tqdm`` hook, which takes a tqdm class; no bar is
  drawn). The vLLM worker's own log records (``distalign.*``, our format) are relogged by the
  parent and so reach the job's log and the console; everything else the worker prints (vLLM's
  INFO lines, warnings, load bars) goes to the job's log file only (``scripting.FILE_ONLY``) and,
  when it fails, into the error message (its last 40 lines).
- **Temporary files** (merged weights, the worker's JSON files) live in a scratch folder of
  ``$TMPDIR`` that the job holds locked (``distalign.core.scratch``); the next job removes those of a
  killed one. The worker exits when its parent dies (it would otherwise run on as an orphan).
- **Probe** (paper Table 4/12): for each test prompt the probability of each class's token at
  the first answer position, renormalised over the K class tokens, read from the raw logits the
  sampling pass computes anyway (``probe_from_generations``; there is no separate probe pass).
  Class tokens are the steering tokens for ``ours`` and otherwise the first token id of each
  class label (``tokenizer.encode(label)[0]``, how the model would start an answer "Male...").
"""
