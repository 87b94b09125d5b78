"""The benchmark's command (sweeps through launchers: test_launchers.py)."""

import re
import statistics
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow
def test_benchmark_prints_its_figures(tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "--repeats", "2", "--floor", "trainer.max_epochs=2",
         f"paths.data_dir={tiny_data}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"start-up: imports [\d.]+ s, config [\d.]+ s, data [\d.]+ s, "
                     r"fit set-up [\d.]+ s", out)
    assert "2 epoch(s) x 2 fit(s)" in out
    assert re.search(r"^bnstudy \(Lightning\): Classifier, TensorBoardLogger, callbacks: "
                     r"MetricsHistory, .*Hallucinations, StudyCheckpoint$", out, re.M), out
    assert "\nbare Lightning loop: BareClassifier, no logger, callbacks: none\n" in out
    for fits, short in (("bnstudy \\(Lightning\\)", "bnstudy"), ("bare Lightning loop", "bare")):
        check_pairs(out, fits, short)


def check_pairs(out: str, name: str, short: str) -> None:
    """The plain loop's and the fits' lines (each median of its 4 epochs) and the ratio line
    that follow them in the benchmark's output, the ratio the median of the pairs' ratios."""
    found = re.search(r"plain PyTorch loop\s+([\d.]+) s/epoch\s+\d+ samples/s\s+"
                      r"\(epochs: ([\d., ]+)\)\n" + name + r"\s+([\d.]+) s/epoch\s+\d+ "
                      r"samples/s\s+\(epochs: ([\d., ]+)\)\nratio " + short +
                      r" / plain \(median of 4 paired epochs\): ([\d.]+)  "
                      r"\(range ([\d.]+)-([\d.]+)\)", out)
    assert found, out
    epochs = []
    for median, listed in (found.group(1, 2), found.group(3, 4)):
        epochs.append([float(v) for v in listed.split(", ")])
        assert len(epochs[-1]) == 4  # paired: one per epoch of each fit
        assert float(median) == pytest.approx(statistics.median(epochs[-1]), abs=1e-3)
    ratio, low, high = map(float, found.group(5, 6, 7))
    # from the printed (rounded) epochs: the ratio of each pair, fit over plain
    ratios = [b / a for a, b in zip(*epochs, strict=True)]
    assert low <= ratio <= high and ratio == pytest.approx(statistics.median(ratios), rel=0.2)
