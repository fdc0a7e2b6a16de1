"""The files a training stage writes in its work folder: the epoch checkpoint a rerun resumes from (removed when
the stage completes) and the per-epoch metrics."""
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
