"""Everything about the pictures of what a network learned, in one package:

- `recipe`: the hallucination recipe (`hallucinate`: objective, parametrisation, jitter, blur);
- `grids`: first-layer weight grids and class-labelled image grids;
- `drawing`: drawing a model's pictures into a run (the callbacks and `bnstudy.draw` use it);
- `measures`: the numbers that say what the pictures show (recognisability, colour, sharpness…);
- `table`: a run's saved pictures, its dataset's references and its `pictures.csv` row.

The training callbacks (`bnstudy.callbacks`) and the report's picture section
(`bnstudy.report.picture_section`) use them.
"""
