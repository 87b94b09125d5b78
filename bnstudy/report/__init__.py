"""`python -m bnstudy.report SWEEP_DIR`: the BN-vs-no-BN report of a finished multirun.

Reads every job directory of the sweep (`metrics.json`, `.hydra/config.yaml`, `images/*.png`),
groups the jobs by every hparam except the seed, and writes `SWEEP_DIR/report/`:

- `curves_<dataset>_<optim>.png`: train/val loss and accuracy per epoch, BN and no BN overlaid;
  the line is the mean over seeds and the shaded band is ± one sample standard deviation
  (ddof=1) across seeds: the seed-to-seed spread, the quantity the t-test weighs, not the
  (narrower) standard error of the mean. With one seed there is no band.
- `weights_<dataset>_<optim>.png`, `hallucinations_<dataset>_<optim>.png`: each side's
  `images/{weights,hallucinations}_final.png` of its first seed, no BN left, BN right.
- `activations_<dataset>_<optim>.png`, `gradients_<dataset>_<optim>.png` (runs trained with
  `callbacks=probes`): the first ok seed's pre-activation percentiles per tracked unit, no BN
  and BN side by side; its per-layer gradient norms, loss landscape, gradient predictiveness
  and β-smoothness vs step, overlaid (see `bnstudy.probes`).
- `lr_<dataset>.png`, `batch_size_<dataset>.png` (when `lr` or `batch_size` varies, as in
  `experiment=lr_sweep` or `batch_sweep`): final validation accuracy vs that hparam, a panel per
  optimizer, a line per norm, diverged runs marked; report.md states each norm's usable range.
- `regime_lr.png`, `regime_batch_size.png` (when that hparam varies, as in `experiment=regime`):
  BN − no BN in final validation accuracy with its 95% Welch interval vs that hparam, a panel
  per dataset, a line per optimizer.
- `summary.csv`: one row per dataset × optim × norm (× any other varying hparam).
- `verdicts.csv`: one row per comparison (dataset, optim, any other varying hparam): ok seeds,
  mean final validation accuracies, `diff` = BN − no BN, Welch's p-value, the verdict (wins,
  loses, ties, no test) and the 95% interval of `diff`.
- `claims.csv` and report.md's Claims section: the study's claims C1–C4, each tested by its own
  statistic (`bnstudy.report.claims`): holds, does not hold or cannot tell.
- `pictures.csv`, labelled hallucination and weight figures (a row per norm × optim, a column
  per class, a reference row of the real class means) and the picture claims P1–P3
  (`bnstudy.report.picture_section`; the per-run measures in `bnstudy.pictures.table`, from
  `bnstudy.pictures.measures`; the claims in `bnstudy.report.claims`).
- `report.md`: the table, the figures and one verdict per dataset × optim, from Welch's t-test
  on the seeds' final validation accuracies.
- TensorBoard events holding the same figures, the report text and margin charts of the mean ±
  std over seeds per pair (`bnstudy.dashboard`), to browse next to the runs.

Statistics use the `ok` runs only; diverged, failed, unfinished and missing jobs are counted
and listed, never dropped silently.
"""

from bnstudy.report.cli import main
from bnstudy.report.write import write_report

__all__ = ["main", "write_report"]
