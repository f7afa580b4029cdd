"""What orchestrates: the CLI, the stage graph and planner, the registry of pipelines, Prefect
flows and deployments, the training workers."""
