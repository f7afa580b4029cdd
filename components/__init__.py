"""One module per stage, plain Python, no Prefect import; and the contract a recipe fulfils
(recipe, pipeline, config, sections, measures)."""
