"""Prefect orchestration: flows from stage graphs, tasks around components, deployments, CLI."""
