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
        [sys.executable, "-m", "bnstudy.bench", "--repeats", "2", "trainer.max_epochs=2",
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
    epochs = {}
    for name in ("plain PyTorch loop", "bnstudy \\(Lightning\\)"):
        found = re.search(name + r"\s+([\d.]+) s/epoch\s+\d+ samples/s\s+"
                          r"\(epochs: ([\d., ]+)\)", out)
        assert found, out
        epochs[name] = [float(v) for v in found.group(2).split(", ")]
        assert len(epochs[name]) == 4  # paired: one per epoch of each fit
        assert float(found.group(1)) == pytest.approx(statistics.median(epochs[name]), abs=1e-3)
    found = re.search(r"ratio bnstudy / plain \(median of 4 paired epochs\): ([\d.]+)  "
                      r"\(range ([\d.]+)-([\d.]+)\)", out)
    assert found, out
    ratio, low, high = map(float, found.groups())
    # from the printed (rounded) epochs: the ratio of each pair, project over plain
    ratios = [b / a for a, b in zip(*epochs.values(), strict=True)]
    assert low <= ratio <= high and ratio == pytest.approx(statistics.median(ratios), rel=0.2)
