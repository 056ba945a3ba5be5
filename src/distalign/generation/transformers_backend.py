"""The transformers backend: batched, left-padded ``model.generate`` on prompts built as token ids."""

from __future__ import annotations

from collections.abc import Sequence

from distalign.core.progress import Progress
from distalign.core.seeds import derive_seed
from distalign.generation.sampling import SampleBatch
from distalign.modeling.chat import eos_ids, strip_eos
from distalign.modeling.models import left_pad, pad_id


class TransformersBackend:
    """Batched HF backend. Prompts are id lists, left-padded by hand with an attention mask."""

    name = "transformers"

    def __init__(
        self,
        model_dir,
        adapter=None,
        device: str = "auto",
        dtype: str | None = None,
        threads: int | None = None,
        batch_size: int = 100,
        tokenizer=None,
        model=None,
    ):
        import torch

        from distalign.modeling.models import load_model

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        if model is None:
            tokenizer, model = load_model(
                model_dir, device=device, dtype=None if dtype == "auto" else dtype, adapter=adapter
            )
        self.tokenizer, self.model = tokenizer, model
        self.batch_size = batch_size
        self.stop = eos_ids(tokenizer, model_dir) if model_dir else [tokenizer.eos_token_id]
        self.pad = pad_id(tokenizer)

    def _pad(self, prompts: Sequence[Sequence[int]]):
        return left_pad(prompts, self.pad, self.model.device)

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], progress: Progress | None = None
    ) -> list[list[float]]:
        """Full-vocabulary log-probs of ``token_ids`` at the position after each prompt."""
        import torch

        out: list[list[float]] = []
        idx = torch.tensor(list(token_ids), dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                ids, mask = self._pad(prompts[start : start + self.batch_size])
                logits = self.model(
                    input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1
                ).logits
                lp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
                out += lp[:, idx].tolist()
                if progress is not None:
                    progress.update(ids.shape[0])
        return out

    def sample(self, batch: SampleBatch, progress: Progress | None = None) -> list[tuple]:
        """Per item of ``batch``: answer ids (without eos), whether eos was produced, the seed of the
        item's batch, and the full-vocabulary log-probs of ``batch.first_ids`` at the first answer
        position (raw logits, before temperature/top-p; None when ``first_ids`` is None).
        ``progress`` counts the finished answers."""
        # one seed per batch (from the job's seed parts and the batch index), not per item
        prompts, sampling, seed_parts = batch.prompts, batch.sampling, batch.seed_parts
        first_ids, guidance = batch.first_ids, batch.guidance
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from distalign.generation.guidance import SteeringGuidance

        kw = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop,
            pad_token_id=self.pad,
            repetition_penalty=1.0,
        )
        if sampling.greedy:
            cfg = GenerationConfig(do_sample=False, **kw)
        else:
            cfg = GenerationConfig(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                **kw,
            )
        results = []
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(prompts), self.batch_size)):
                ids, mask = self._pad(prompts[start : start + self.batch_size])
                batch_seed = derive_seed(*seed_parts, "batch", b)
                torch.manual_seed(batch_seed)
                processors = LogitsProcessorList()
                if guidance is not None and guidance.scale != 1.0:
                    end = start + self.batch_size
                    alt_ids, alt_mask = self._pad([a for alts in guidance.others[start:end] for a in alts])
                    weights = torch.tensor(guidance.weights[start:end], dtype=torch.float32)
                    processors.append(
                        SteeringGuidance(
                            self.model, alt_ids, alt_mask, weights, guidance.scale, guidance.plausibility
                        )
                    )
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=cfg,
                    logits_processor=processors,
                    return_dict_in_generate=True,
                    output_logits=first_ids is not None,
                )
                first = None
                if first_ids is not None:
                    idx = torch.tensor(list(first_ids), dtype=torch.long, device=self.model.device)
                    first = torch.log_softmax(out.logits[0].float(), dim=-1)[:, idx].tolist()
                for j, row in enumerate(out.sequences[:, ids.shape[1] :].tolist()):
                    toks, stopped = strip_eos(row, self.stop)
                    results.append((toks, stopped, batch_seed, first[j] if first is not None else None))
                if progress is not None:
                    progress.update(ids.shape[0])
        return results
