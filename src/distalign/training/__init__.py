"""Fine-tuning: the rows each stage trains on (rows), the steering-token losses (losses), the trl
trainer subclasses and their config dataclasses (trainers), and the job that runs the stages
(runner).
"""
