"""`python -m bnstudy.draw SWEEP_OR_RUN_DIR [KEY=VALUE ...] [--replace]`: draws the final
pictures of finished runs again, from their checkpoints, with another recipe, no training.

Drawn as the callbacks draw them with the run's picture settings updated by the KEY=VALUE ones,
into `images/` (the replaced ones kept in `images/<their recipe>/` unless `--replace`) and a new
TensorBoard events file."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from bnstudy import rebuild
from bnstudy.config import CONFIG_DIR, picture_range
from bnstudy.console import quiet_console
from bnstudy.errors import DataError, RunFileError, types_refused
from bnstudy.records import RECIPE_FILE, study_dir, write_json_atomic
from bnstudy.trackers import uses_tensorboard

PICTURE_CALLBACKS = ("weight_grid", "hallucinations")
TRAINING_ONLY = ("_target_", "dirpath", "every_n_epochs", "epoch_steps")  # not a drawing's
TYPE_NAMES = {int: "a whole number", float: "a number", str: "a word", type(None): "null"}


def default_recipe() -> dict[str, dict]:
    """The picture settings of `conf/callbacks/default.yaml`, by callback."""
    callbacks = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml"))
    return {name: {k: v for k, v in callbacks[name].items() if k not in TRAINING_ONLY}
            for name in PICTURE_CALLBACKS}


def parse_overrides(items: list[str]) -> tuple[dict, str | None]:
    """The picture settings given, `{callback: {key: value}}` (type-checked; keys as
    `callbacks.<callback>.<key>`, `<callback>.<key>` or a bare unique `<key>`), and
    `paths.data_dir` (or None)."""
    from bnstudy.pictures.drawing import Hallucinator

    types = {"weight_grid": {"num_units": int}, "hallucinations": Hallucinator.knobs()}
    given: dict[str, dict] = {name: {} for name in PICTURE_CALLBACKS}
    paths = {}
    valid = ", ".join(f"{name}.{key}" for name, keys in types.items() for key in keys)
    for item in items:
        key, value = rebuild.parse_setting(item, ". Give settings as KEY=VALUE, e.g. "
                                           f"hallucinations.steps=400; the keys: {valid}.")
        if key == "paths.data_dir":
            rebuild.set_once(paths, "data_dir", str(value), key)
            continue
        parts = key.removeprefix("callbacks.").split(".")
        owners = [n for n, keys in types.items() if parts[-1] in keys and parts[:-1] in ([], [n])]
        if len(owners) != 1:
            raise rebuild.UsageError(
                f"{key} only matters while a run trains; draw makes the final pictures from "
                f"the checkpoint. The settings it takes: {valid}." if parts[-1] in TRAINING_ONLY
                else f"{key}: no such picture setting. The settings draw takes: {valid} (each "
                "also as callbacks.<name>.<key> or, where unique, the bare key), and "
                "paths.data_dir=DIR.")
        name, knob = owners[0], parts[-1]
        if allowed := types_refused(value, types[name][knob]):
            raise rebuild.UsageError(
                f"{key}={value!r}: {knob} takes {' or '.join(TYPE_NAMES[t] for t in allowed)}, "
                f"e.g. {name}.{knob}={default_recipe()[name].get(knob)}.")
        rebuild.set_once(given[name], knob, value, f"{name}.{knob}")
    return given, paths.get("data_dir")


def recipe_name(recipe: dict[str, dict], defaults: dict[str, dict]) -> str:
    """A folder name for a recipe: its `key=value`s that differ from the defaults, or `default`."""
    parts = [f"{k}={'null' if v is None else v}" for name, base in defaults.items()
             for k, v in recipe[name].items() if v != base.get(k)]
    return ",".join(parts) or "default"


class AlreadyDrawn(Exception):
    """A run whose final pictures this command drew with the same recipe before."""


def draw_run(run: rebuild.SavedRun, given: dict, defaults: dict, data: rebuild.DataCache,
             replace: bool) -> str:
    """Draws one ok run's final pictures with its recipe updated by `given`; returns its line."""
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.pictures import drawing

    stored = {name: OmegaConf.select(run.cfg, f"callbacks.{name}") for name in defaults}
    trained = {name: {k: (stored[name] or {}).get(k, v) for k, v in base.items()}
               for name, base in defaults.items()}  # the settings the run trained with
    recipe = {name: {**settings, **given[name]} for name, settings in trained.items()}
    images = run.path / "images"
    redrawn = (images / RECIPE_FILE).is_file()  # by this command before
    drawn = json.loads((images / RECIPE_FILE).read_text()) if redrawn else {"step": None, **trained}
    if redrawn and not replace and all(drawn.get(name) == recipe[name] for name in recipe):
        raise AlreadyDrawn(f"{run.name}: already drawn with this recipe ({drawn['name']}); "
                           "--replace draws it again")
    hallucinator = drawing.Hallucinator(**recipe["hallucinations"])
    checkpoint, datamodule, model = rebuild.restore(run, data, "validate")
    if not drawing.all_finite(model):
        return f"{run.name}: its parameters are not finite: no pictures"
    initial = next((state["initial"] for key, state in checkpoint.get("callbacks", {}).items()
                    if key.startswith("WeightGrid") and state.get("initial") is not None), None)
    untrained = [] if redrawn else [name for name, node in stored.items() if node is None]
    earlier = f"without_{'+'.join(untrained)}" if untrained else recipe_name(drawn, defaults)
    step = max(checkpoint.get("global_step", 0), drawn["step"] or 0) + 1

    fresh, summaries, kept = images / f".drawing-{os.getpid()}", [], None
    started = time.perf_counter()
    try:
        fresh.mkdir(parents=True, exist_ok=True)
        drawing.draw_weights(model, datamodule.input_shape, fresh, "final", initial,
                             recipe["weight_grid"]["num_units"], summaries.append)
        drawing.save_weights(model, datamodule, initial, fresh)
        pictures, seconds = hallucinator.draw(model, datamodule, fresh, "final",
                                              log=summaries.append)
        hallucinator.save(model, datamodule, pictures, seconds, fresh)
        old = [images / f for f in (*drawing.FINAL_FILES, RECIPE_FILE) if (images / f).exists()]
        if old and not replace:
            kept, n = images / earlier, 1
            while kept.exists():
                n += 1
                kept = images / f"{earlier}-{n}"
            kept.mkdir()
            for path in old:
                shutil.copy2(path, kept / path.name)
        for path in old:  # a file the new drawing has no counterpart of is not current
            if not (fresh / path.name).exists():
                path.unlink()
        for path in fresh.iterdir():
            os.replace(path, images / path.name)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    write_json_atomic(images / RECIPE_FILE, {
        "name": recipe_name(recipe, defaults), **recipe, "step": step,
        "drawn_by": "python -m bnstudy.draw", "seconds": time.perf_counter() - started})
    board = uses_tensorboard(run.cfg.get("logger"))  # a run logged elsewhere gets no events
    if board:
        with SummaryWriter(str(run.path)) as writer:
            for summary in summaries:
                writer.file_writer.add_summary(summary, step)
    where = (f"the earlier ones ({earlier}) are in images/{kept.name}/" if kept
             else "the earlier ones were replaced" if old else "none before")
    return (f"{run.name}: drawn ({recipe_name(recipe, defaults)}) in "
            f"{time.perf_counter() - started:.1f} s{f', TensorBoard step {step}' if board else ''}"
            f"; {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.draw", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="e.g. python -m bnstudy.draw outputs/multirun/2026-01-01_10-00-00 "
               "hallucinations.steps=400 objective=logit")
    parser.add_argument("path", type=Path, help="a sweep's or a run's directory")
    parser.add_argument("settings", nargs="*", default=[], metavar="KEY=VALUE",
                        help="picture settings (conf/callbacks/default.yaml), paths.data_dir")
    parser.add_argument("--replace", action="store_true",
                        help="replace the earlier final drawings instead of keeping them")
    args = parser.parse_intermixed_args(argv)  # `RUN --replace steps=100` too
    try:
        from bnstudy.pictures.drawing import Hallucinator

        defaults = default_recipe()
        given, data_dir = parse_overrides(args.settings)
        Hallucinator(**{**defaults["hallucinations"], **given["hallucinations"]})
        if need := picture_range("num_units", units := given["weight_grid"].get("num_units")):
            raise ValueError(f"weight_grid.num_units={units} is out of range; it must be {need}")
        paths = rebuild.run_dirs(args.path)
    except (rebuild.UsageError, rebuild.RunError, ValueError) as err:  # ValueError: a recipe
        more = "" if not isinstance(err, ValueError) else (  # the callbacks would refuse too
            ". The recipe's settings are described in conf/callbacks/default.yaml.")
        print(f"bnstudy.draw: {err}{more}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    quiet_console()
    data, drawn, problems, skipped, done = rebuild.DataCache(data_dir), 0, [], [], []
    for path in tqdm(paths, desc="drawing", unit="run", disable=not sys.stderr.isatty(),
                     leave=False):
        try:
            with rebuild.writing(path, "draw", "drawn"):  # a run in training: in use
                run = rebuild.SavedRun.open(path)
                if run.status == "diverged":  # a result, without pictures
                    skipped.append(run.name)
                    tqdm.write(f"{run.name}: diverged: no pictures", file=sys.stdout)
                    continue
                if run.status != "ok":
                    status = run.status if run.record is None else f"status {run.status}"
                    raise rebuild.RunError(
                        f"{run.name}: not finished ({status}), so it has no final pictures to "
                        "draw again. Finish its training first (its command with resume=true), "
                        "then draw it.")
                line = draw_run(run, given, defaults, data, args.replace)
            tqdm.write(line, file=sys.stdout)
            drawn += 1
        except AlreadyDrawn as already:  # (a Ctrl-C'd draw run again goes on where it stopped)
            done.append(path.name)
            tqdm.write(f"{already}", file=sys.stdout)
        except (rebuild.RunError, DataError, RunFileError, ValueError) as err:
            problems.append(path.name)
            tqdm.write(f"{err}", file=sys.stderr)
        except KeyboardInterrupt:  # a drawing is swapped in whole: the run keeps its pictures
            print(f"bnstudy.draw: interrupted while drawing {path.name} (its pictures are as "
                  f"they were); drew {drawn} of {len(paths)} run(s). The same command draws "
                  "the rest (a run drawn with this recipe is skipped); a run's directory draws "
                  "that run alone.", file=sys.stderr)
            return 1
    print(f"Drew {drawn} of {len(paths)} run(s)"
          + (f"; {len(done)} already drawn with this recipe" if done else "")
          + (f"; {len(skipped)} diverged (no pictures)" if skipped else "")
          + (f"; {len(problems)} could not be drawn: {', '.join(problems)}" if problems else "")
          + (_report_of(args.path) if drawn + len(done) else "."))
    return 1 if problems else 0


def _report_of(path: Path) -> str:
    """`. Report: <its command>` where the report takes the folder (a sweep's), else `.`."""
    from bnstudy.report.runs import ReportError, sweep_jobs

    try:
        sweep_jobs(folder := study_dir(path))
    except ReportError:  # a run, or single runs (`outputs/runs`)
        return "."
    return f". Report: python -m bnstudy.report {shlex.quote(str(folder))}"


if __name__ == "__main__":
    sys.exit(main())
