"""The pictures of what a network learned: `recipe` (the hallucination recipe), `grids`
(weight and labelled image grids), `drawing` (into a run's images/ and TensorBoard, for the
callbacks and `bnstudy.draw`), `measures` (the numbers behind P1–P3) and `table` (the report's
`pictures.csv` rows)."""
