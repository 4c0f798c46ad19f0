"""vidops orchestration: Prefect tasks and flows that wire the stages in `components`, profiles, and the CLI."""
