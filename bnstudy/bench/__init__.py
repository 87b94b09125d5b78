"""Benchmarks of the project against plain PyTorch on the same data and model.

    python -m bnstudy.bench [--repeats 3] [--floor] [overrides ...]    # per epoch (`epochs`)
    python -m bnstudy.bench study [--repeats 2] [overrides ...]         # a whole study (`study`)
    python -m bnstudy.bench profile [--jobs 3] [overrides ...]          # where a job's time goes

`plain` is the plain PyTorch loop; the study benchmark starts it as processes (`python -m
bnstudy.bench plain RUNS RESULTS --share I/N`): they import neither Lightning nor Hydra.
"""
