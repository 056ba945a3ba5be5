"""What the workflow generates from: target distributions (census CSVs), the prompt pool
(templates, paraphrases, splits), the fine-tuning datasets and the D_story rows.
"""
