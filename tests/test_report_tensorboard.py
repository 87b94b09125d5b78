"""The report's TensorBoard events: margin charts of the mean ± std over seeds (its `+mean`
runs), the report text with its figures named, not embedded, and each figure as the very
pixels of its PNG file."""

import numpy as np
import pytest
from helpers import assert_images_are_the_png_files, read_run, write_job
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnstudy.report.cli import main

ACCS = {("bn", 0): [0.5, 0.7], ("bn", 1): [0.6, 0.9], ("none", 0): [0.4, 0.5],
        ("none", 1): [0.3, 0.6]}


def test_margin_charts_images_and_text_of_a_reports_events(tmp_path):
    for (norm, seed), accs in ACCS.items():
        write_job(tmp_path, accs, norm=norm, seed=seed)
    write_job(tmp_path, [0.1, float("nan")], status="diverged", norm="bn", seed=2)  # left out
    assert main([str(tmp_path)]) == 0
    for norm in ("bn", "none"):
        seeds = np.array([ACCS[norm, 0], ACCS[norm, 1]])
        mean, std = seeds.mean(0), seeds.std(0, ddof=1)
        scalars, layout = read_run(tmp_path / "report" / "+mean" / norm)
        for part, expected in (("mean", mean), ("lower", mean - std), ("upper", mean + std)):
            got = scalars[f"seeds/mnist-sgd/val_acc/{part}"]
            assert [s for s, _ in got] == [9, 19]  # each epoch's last step
            assert [v for _, v in got] == pytest.approx(expected.tolist(), abs=1e-6)
        assert [c.title for c in layout] == ["mnist · sgd · mean ± std over 2 seed(s) each"]
    assert assert_images_are_the_png_files(tmp_path / "report") == {"curves/mnist_sgd"}
    events = EventAccumulator(str(tmp_path / "report"), size_guidance={"tensors": 0}).Reload()
    (text,) = events.Tensors("report/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert "![" not in shown and "## Summary" in shown
    assert "*(figure `curves_mnist_sgd`: see the Images tab)*" in shown
