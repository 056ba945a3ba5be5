"""distalign: measure and control the distribution of attributes across many LLM generations.

The library behind the Snakemake workflow. Each module owns one responsibility:

- ``config``: load and validate the workflow configuration (JSON schema + cross-references).
- ``attributes``: attributes (ordered classes, steering tokens, parser keywords) from config.
- ``targets``: census tables and per-context target distributions P*(a|c).
- ``prompts``: template bank, offline and OpenAI-compatible paraphrasers, prompt splits.
- ``datasets``: D_base, SFT and preference data (paper section 3.3).
- ``models``: one function that turns a model spec into (tokenizer, model).
- ``io``: atomic writes and JSONL helpers.
"""

__version__ = "0.1.0"
