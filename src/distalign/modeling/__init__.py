"""Models and tokens: preparing and loading weights (embedded GGUF, hub, folder), chat prompts
built as token ids, and the pre-flight checks that need the tokenizer, the model or an endpoint.
"""
