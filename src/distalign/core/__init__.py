"""The layer everything else stands on: configuration (schema defaults, cross-field checks, typed
specs), attributes and their classes, strict file I/O, seeds, mixtures (the LP of the closest
mixture), the OpenAI-compatible client, progress lines, scratch folders and the script contract.
Imports nothing else from distalign.
"""
