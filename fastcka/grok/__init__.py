"""The grokking trainer and the Ô01 early-warning detector (``fastcka grok``).

data.py (tasks), model.py (the transformer), train.py (the loop, logs, checkpoints), detect.py (the online
detector), plot.py (one PNG per run). Nothing heavy is imported here: ``from fastcka.grok.train import train``.
"""
