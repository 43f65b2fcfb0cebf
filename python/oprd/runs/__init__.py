"""What a run leaves on disk and how it is trusted again: `checkpoint` (the checkpoint format, atomic saves,
verified loads, exact resume), `manifest` (sizes and hashes), `atomic_files`, `metrics_log` (metrics.jsonl) and
`run_dir` (a fresh run never lands on another run's outputs).

Single-process file code: it imports nothing of `oprd`. `parallel` saves through it from several processes.
"""
