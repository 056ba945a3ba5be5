"""Steering guidance: decoding that sharpens the tie between the drawn steering token and the answer
(not in the paper).

A method of kind ``ours`` draws token k with the model's calibrated probability, then samples the
answer from p(x | k). When the adapter has learnt to *score* answers by their token (the story binding
term reaches training accuracy .8-1.0) but its own samples still ignore the token (sentiment stories:
consistency .39 against .33 by chance), the binding is in the model's likelihoods but too weak to move
sampling. Guidance with scale g samples each next token from

    log q(x_t) = g * log p(x_t | k, x_<t) - (g - 1) * log m(x_t | x_<t),
    m(x_t | x_<t) = sum_{j != k} w_j p(x_t | j, x_<t),   w_j = p_j / sum_{i != k} p_i,

i.e. the next-token distribution under the drawn token is contrasted with the mixture of the *other*
tokens' distributions, weighted by the model's own token probabilities. By Bayes this favours
continuations whose posterior points to k over the other tokens: classifier-free guidance (Sanchez et
al. 2023) whose "unconditional" branch is the other steering tokens rather than an empty prompt. An
empty prompt would be wrong here: after the assistant header the adapter puts its mass on the steering
tokens themselves, so the first answer token would be contrasted with a digit.

Decisions: g = 1 is plain sampling (no extra forward pass). The contrast is applied to the raw
log-probs, before temperature, top-k and top-p (HF runs processors passed to ``generate`` before its
sampling warpers), as classifier-free guidance does.
The other tokens' prefixes are extended with the tokens the guided row samples, so each branch reads
the same answer so far. It costs K - 1 extra rows per sample in every forward pass (transformers
backend only: vLLM has no hook for logits from a second batch of contexts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from distalign.core.config import plausibility_default

# Adaptive plausibility constraint of contrastive decoding (Li et al. 2023, their alpha): guidance only
# reorders tokens the drawn token's own distribution finds plausible. Without it, on the embedded
# model at g = 3, stories opened mid-sentence (" months away Sarah ...") or ran words together: the
# contrast lifts tokens that are rare under every branch.
PLAUSIBILITY = plausibility_default()  # methods.<name>.steering_guidance.plausibility in the schema


def contrast_weights(probs: Sequence[float], k: int) -> list[float]:
    """Weights of the other tokens j != k in the contrast mixture: their probabilities renormalised
    (uniform when the model gives them no mass)."""
    others = [float(p) for j, p in enumerate(probs) if j != k]
    if not others:
        raise ValueError("steering guidance needs at least two steering tokens")
    total = sum(others)
    if not math.isfinite(total) or total <= 0:
        return [1.0 / len(others)] * len(others)
    return [p / total for p in others]


def guided_log_probs(cond, others, weights, scale: float, plausibility: float = PLAUSIBILITY):
    """g * log p(x|k) - (g-1) * log sum_j w_j p(x|j), from log-probs (torch tensors), -inf for the
    tokens outside the plausible set {x: p(x|k) >= plausibility * max p(.|k)}.

    ``cond``: (B, V) log-probs under the drawn token; ``others``: (B, J, V) under the other tokens;
    ``weights``: (B, J) mixture weights (rows sum to 1).
    """
    import torch

    mix = torch.logsumexp(others + torch.log(weights.clamp_min(1e-30)).unsqueeze(-1), dim=1)
    guided = scale * cond - (scale - 1.0) * mix
    if plausibility > 0:
        floor = cond.max(dim=-1, keepdim=True).values + math.log(plausibility)
        guided = guided.masked_fill(cond < floor, -math.inf)
    return guided


class SteeringGuidance:
    """HF ``LogitsProcessor`` running the other tokens' prefixes beside the batch (own KV cache).

    ``alt_ids``/``alt_mask``: (B * J, L) left-padded prompts, row b * J + j = batch row b with its
    j-th other token; ``weights``: (B, J). Build one per ``generate`` call.
    """

    def __init__(self, model, alt_ids, alt_mask, weights, scale: float, plausibility: float):
        self.model, self.scale, self.plausibility = model, float(scale), float(plausibility)
        self.ids, self.mask, self.weights = alt_ids, alt_mask, weights
        self.n_alt = weights.shape[1]
        self.cache = None

    def _other_log_probs(self, input_ids):
        import torch

        if self.cache is None:
            ids, mask = self.ids, self.mask
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
        else:
            ids = input_ids[:, -1:].repeat_interleave(self.n_alt, dim=0)
            self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
            mask = self.mask
            pos = mask.sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return lp.view(-1, self.n_alt, lp.shape[-1])

    def __call__(self, input_ids, scores):
        import torch

        cond = torch.log_softmax(scores.float(), dim=-1)
        if self.scale == 1.0:
            return cond
        others = self._other_log_probs(input_ids)
        return guided_log_probs(
            cond, others[:, :, : cond.shape[-1]], self.weights.to(cond.device), self.scale, self.plausibility
        )
