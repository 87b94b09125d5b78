"""`python -m bnstudy.report SWEEP_DIR`: a finished multirun's report, in three stages: the
table of runs (`runs`), decisions over it (`stats`, `claims`, `verdicts`), renderers that only
format (`render`, `sections`, `answer`, `figures`, `picture_section`, `write`). Statistics use
the ok runs; the others are counted and listed, never dropped silently. The package imports
nothing itself: a sweep's closing answer (`answer`) loads no figures."""
