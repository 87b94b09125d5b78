"""`python -m bnstudy.eval RUN_DIR_OR_CHECKPOINT [paths.data_dir=DIR] [trainer.FLAG=VALUE ...]`:
test loss and accuracy of a checkpoint on its run's test split (`bnstudy.rebuild`), scored by
`Trainer.test` with the run's own trainer settings on one device, so the numbers are the ones
the run recorded; printed beside them and written to `eval.json` in the run's directory
(`eval-<file>.json` for another checkpoint). A sweep's directory evaluates each of its runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from bnstudy import rebuild
from bnstudy.console import quiet_console
from bnstudy.errors import DataError, RunFileError, first_line, trainer_hints, trainer_type
from bnstudy.records import is_job_dir, write_json_atomic

SET_HERE = ("devices", "strategy", "num_nodes", "logger", "enable_checkpointing", "callbacks",
            "enable_model_summary", "enable_progress_bar", "default_root_dir")


def parse_settings(items: list[str]) -> tuple[str | None, dict]:
    """`paths.data_dir` and the Trainer flags given (`trainer.*`), parsed and typed as the
    training command line's (`overrides.trainer_type`)."""
    import difflib

    paths, trainer = {}, {}
    for item in items:
        key, value = rebuild.parse_setting(item, "; give KEY=VALUE.")
        if key == "paths.data_dir":
            rebuild.set_once(paths, "data_dir", str(value), key)
        elif key.startswith("trainer.") and key.count(".") == 1:
            flag = key.split(".", 1)[1]
            if key not in trainer_hints():  # (Lightning imported for a flag given only: seconds)
                near = difflib.get_close_matches(
                    flag, [k.split(".", 1)[1] for k in trainer_hints()], n=1)
                raise rebuild.UsageError(
                    f"{key}: the Trainer has no such flag"
                    + (f"; did you mean trainer.{near[0]}?" if near else
                       ": give Lightning Trainer arguments, e.g. trainer.precision=bf16-mixed."))
            if flag in SET_HERE:
                raise rebuild.UsageError(f"{key}: eval sets it itself (one device; no logger, "
                                         "checkpoints or callbacks).")
            if said := trainer_type(item, key, [value]):
                raise rebuild.UsageError(said)
            rebuild.set_once(trainer, flag, value, key)
        else:
            raise rebuild.UsageError(
                f"{key}: eval takes paths.data_dir=DIR (where the data is now) and trainer "
                "flags (e.g. trainer.accelerator=cpu); the model, data and splits are the run's "
                "own.")
    return paths.get("data_dir"), trainer


def targets(path: Path) -> list[tuple[Path, Path]]:
    """(run directory, checkpoint) pairs of a checkpoint file, a run's or a sweep's directory."""
    if path.is_file():
        run = path.parent.parent
        if path.parent.name != "checkpoints" or not is_job_dir(run):
            raise rebuild.RunError(f"{path} is not in a run's checkpoints/ folder, so its run's "
                                   "dataset and test split are unknown. Pass a checkpoint "
                                   "inside <run>/checkpoints/, or the run's directory.")
        return [(run, path)]
    return [(run, run / rebuild.CHECKPOINT) for run in rebuild.run_dirs(path)]


def evaluate(run: rebuild.SavedRun, checkpoint_path: Path, data: rebuild.DataCache,
             flags: dict) -> dict:
    """Tests the checkpoint on the run's test split; returns what `eval.json` holds."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    checkpoint, datamodule, model = rebuild.restore(run, data, "test", checkpoint_path)
    kept = ("_target_", "accelerator", "precision", "limit_test_batches", "inference_mode",
            "deterministic", "benchmark", "fast_dev_run")  # what changes a test's numbers
    trainer_cfg = {k: v for k, v in OmegaConf.to_container(run.cfg.trainer).items()
                   if k in kept} | flags
    try:
        trainer = instantiate(
            trainer_cfg, devices=1, strategy="auto", num_nodes=1, logger=False,
            enable_checkpointing=False, enable_model_summary=False, callbacks=[],
            enable_progress_bar=sys.stderr.isatty(), default_root_dir=str(run.path))
        started = time.perf_counter()
        tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    except (InstantiationException, MisconfigurationException) as err:  # a flag given
        given = ", ".join(f"trainer.{k}={v}" for k, v in flags.items()) or "none"
        raise rebuild.RunError(
            f"{run.name}: not evaluated, Lightning's Trainer refused the settings "
            f"({first_line(err.__cause__ or err)}). The flags given: {given}; the others are "
            "the run's own.") from None
    recorded = run.record.test if run.record else None
    return {"checkpoint": str(checkpoint_path.relative_to(run.path)),
            "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step"),
            "test": {"loss": tested["test/loss"], "acc": tested["test/acc"]},
            "recorded_test": recorded, "trainer_flags": flags,
            "seconds": time.perf_counter() - started}


def result_line(run: rebuild.SavedRun, result: dict, written: Path) -> str:
    test, recorded = result["test"], result["recorded_test"] or {}
    said = "no test result recorded" + ("" if run.status in ("ok", "diverged") else
                                        f": the run is not finished ({run.status})")
    if recorded.get("acc") is not None:
        same = abs(recorded["acc"] - test["acc"]) < 5e-7 and \
            abs(recorded["loss"] - test["loss"]) <= 1e-5 * max(1.0, abs(recorded["loss"]))
        said = "as recorded" if same else \
            f"recorded: loss {recorded['loss']:.4f}, acc {100 * recorded['acc']:.2f} %"
    epoch = result["epoch"]  # Lightning's index of the epoch it was saved at: said from 1
    return (f"{run.name} ({result['checkpoint']}, "
            f"{'epoch unknown' if epoch is None else f'after epoch {epoch + 1}'}): test loss "
            f"{test['loss']:.4f}, test acc {100 * test['acc']:.2f} % ({said}) -> "
            f"{written.relative_to(run.path.parent)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.eval", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="e.g. python -m bnstudy.eval outputs/multirun/2026-01-01_10-00-00")
    parser.add_argument("path", type=Path,
                        help="a run's directory, a sweep's directory, or a checkpoint file")
    parser.add_argument("settings", nargs="*", default=[], metavar="KEY=VALUE",
                        help="paths.data_dir=DIR, trainer.FLAG=VALUE")
    args = parser.parse_args(argv)
    try:
        data_dir, flags = parse_settings(args.settings)
        pairs = targets(args.path)
    except (rebuild.UsageError, rebuild.RunError) as err:
        print(f"bnstudy.eval: {err}", file=sys.stderr)
        return 2

    quiet_console()
    data, problems = rebuild.DataCache(data_dir), []
    for run_path, checkpoint in pairs:
        try:
            with rebuild.writing(run_path, "eval", "evaluated"):
                run = rebuild.SavedRun.open(run_path)
                result = evaluate(run, checkpoint, data, flags)
                name = "eval.json" if checkpoint == run.checkpoint else \
                    f"eval-{checkpoint.name}.json"
                write_json_atomic(run.path / name, result)
            print(result_line(run, result, run.path / name))
        except (rebuild.RunError, DataError, RunFileError) as err:
            problems.append(run_path.name)
            print(err, file=sys.stderr)
    if len(pairs) > 1 or problems:
        print(f"Evaluated {len(pairs) - len(problems)} of {len(pairs)} run(s)"
              + (f"; not evaluated: {', '.join(problems)}" if problems else "") + ".")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
