"""Reading generations: judges (keyword parser, lexicon, VADER, LLM judge), distribution metrics and
the noise floor, the internal probe, the validity weights of the steering draw, the capability check,
the judge check, and the judge's own vLLM server.
"""
