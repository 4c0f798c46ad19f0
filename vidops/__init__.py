"""vidops: Prefect flows, MLflow models and DVC datasets for video models.

The installed distribution keeps all its code under this one name: `vidops.components` (the project's `components/`),
`vidops.flows` (`flows/`), `vidops.benchmarks` (`benchmarks/`) and the command line, `vidops.cli`. Importing this
package imports nothing else, so a served model can carry it with `components/` alone.
"""
