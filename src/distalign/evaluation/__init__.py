"""Reading generations: judges (keyword parser, lexicon, VADER, LLM judge), distribution metrics
and the noise floor, the capability check, the judge check, and the judge's own vLLM server.
"""
