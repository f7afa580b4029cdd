"""`tapeline compare` in the Prefect UI: the comparison as a table artifact, its PNG as a markdown one."""
from __future__ import annotations

import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pictures import data_uri

# the PNG embedded in the markdown artifact: a few runs' grids and the table stay readable
MAX_PNG_BYTES = 400_000


def key(pipeline: str) -> str:
    """The artifacts' key: Prefect takes lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-compare".lower())


@flow(name="compare", flow_run_name="compare-{pipeline}", validate_parameters=False)
def publish(pipeline: str, table: list[dict], png: str) -> None:
    """A flow run that holds the comparison: its table artifact (rows: created, the config keys
    that differ, the metrics, the pictures) and a markdown artifact showing the PNG, both under
    the pipeline's compare key (Prefect deprecates artifacts made outside a run)."""
    runs = [c for c in table[0] if c]
    create_table_artifact(table, key=key(pipeline),
                          description=f"tapeline compare {pipeline}: {', '.join(runs)} (PNG: {png})")
    try:
        picture = f"![comparison]({data_uri(png, MAX_PNG_BYTES)})"
    except (OSError, ValueError) as e:
        picture = f"`{png}` (not embedded: {type(e).__name__})"
    create_markdown_artifact(f"# {pipeline}: runs side by side\n\n{picture}\n\n`{png}`\n",
                             key=f"{key(pipeline)}-png", description=f"tapeline compare {pipeline}: the PNG")
