"""The `vidops` commands, a module each area: the pipeline, data, models, services and benchmarks."""
