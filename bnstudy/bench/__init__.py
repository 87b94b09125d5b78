"""Benchmarks of the project against plain PyTorch on the same data and model.

    python -m bnstudy.bench [--repeats 3] [--floor] [overrides ...]    # per epoch (`epochs`)
    python -m bnstudy.bench study [--repeats 2] [overrides ...]         # a whole study (`study`)
    python -m bnstudy.bench profile [--jobs 3] [overrides ...]          # where a job's time goes

`plain` is the plain PyTorch loop; the study benchmark starts it as processes (`python -m
bnstudy.bench plain RUNS RESULTS --share I/N`): they import neither Lightning nor Hydra.
"""


def check_overrides(overrides: list[str]) -> str | None:
    """What is wrong with a benchmark's overrides before anything runs (a misspelt benchmark, a
    setting no config has, a group option no file is: each of a sweep's), or None."""
    if word := next((o for o in overrides if "=" not in o and not o.startswith("~")), None):
        return (f"{word!r} is no benchmark (study, profile) and no override KEY=VALUE, e.g. "
                "python -m bnstudy.bench study, or python -m bnstudy.bench dataset=cifar10.")
    from bnstudy.overrides import first_mistake  # (no Lightning)

    return first_mistake(overrides)
