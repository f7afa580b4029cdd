"""One module per stage: plain Python functions, no Prefect import."""
