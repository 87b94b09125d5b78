"""Benchmarks of the project against plain PyTorch on the same data and model.

    python -m bnstudy.bench [--repeats 3] [--floor] [overrides ...]    # per epoch (`epochs`)
    python -m bnstudy.bench study [--repeats 2] [overrides ...]         # a whole study (`study`)
    python -m bnstudy.bench profile [--jobs 3] [overrides ...]          # where a job's time goes

`plain` is the plain PyTorch loop; the study benchmark starts it as processes (`python -m
bnstudy.bench plain RUNS RESULTS --share I/N`): they import neither Lightning nor Hydra.
"""


def check_overrides(overrides: list[str]) -> str | None:
    """What is wrong with a benchmark's overrides before anything runs: a word that is no
    KEY=VALUE (a misspelt benchmark), a setting no config has, or a group's option no file is
    (each of a sweep's, `dataset=mnist,imagenet`), in Hydra's words."""
    if word := next((o for o in overrides if "=" not in o and not o.startswith("~")), None):
        return (f"{word!r} is no benchmark (study, profile) and no override KEY=VALUE, e.g. "
                "python -m bnstudy.bench study, or python -m bnstudy.bench dataset=cifar10.")
    from bnstudy.config import CONFIG_DIR, unknown_override  # (light: no Lightning)

    for group, _, value in (o.partition("=") for o in overrides):
        options = sorted(f.stem for f in (CONFIG_DIR / group).glob("*.yaml"))
        if group.isidentifier() and options and (missing := [
                v for v in value.strip("[]").split(",") if v.strip() not in options]):
            return (f"In 'config': Could not find '{group}/{missing[0].strip()}'\n\nAvailable "
                    f"options in '{group}':\n\t" + "\n\t".join(options))
    return unknown_override(overrides)
