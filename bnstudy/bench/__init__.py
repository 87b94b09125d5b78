"""Benchmarks of the project against plain PyTorch on the same data and model.

    python -m bnstudy.bench [--repeats 3] [--floor] [overrides ...]    # per epoch (`epochs`)
    python -m bnstudy.bench study [--repeats 2] [overrides ...]         # a whole study (`study`)
    python -m bnstudy.bench profile [--jobs 3] [overrides ...]          # where a job's time goes

`plain` is the plain PyTorch process the study benchmark starts (`python -m bnstudy.bench
plain RUNS RESULTS`): it imports neither Lightning nor Hydra.
"""
