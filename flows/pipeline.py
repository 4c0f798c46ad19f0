"""The training pipeline as a Prefect flow: validate -> extract -> train -> evaluate -> register.

Each task is a stage of `flows.stages` (the same functions `vidops stage` runs for DVC);
the flow body only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, runtime, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from components.evaluation import Evaluation
from components.extraction import FeatureSet
from components.layout import Layout
from components.params import Params, load_params
from components.registry import Registration
from components.validation import ValidationSummary
from flows import stages
from flows.profiles import tracking

# No caching yet: a stage's outputs are files, and reusing them belongs with their content hashes.
validate_dataset = task(stages.validate_dataset, cache_policy=NO_CACHE)
train_classifier = task(stages.train_classifier, cache_policy=NO_CACHE)
evaluate_classifier = task(stages.evaluate_classifier, cache_policy=NO_CACHE)
register_model = task(stages.register_model, cache_policy=NO_CACHE)


@task(cache_policy=NO_CACHE)
def extract_features(layout: Layout, params: Params) -> FeatureSet:
    """The extract stage, with its progress shown in the Prefect UI."""
    artifact = create_progress_artifact(0.0, key="extraction-progress", description="clips extracted (%)")
    return stages.extract_features(layout, params, lambda done, total: update_progress_artifact(artifact, 100 * done / total))


@dataclass(frozen=True)
class PipelineResult:
    summary: ValidationSummary
    evaluation: Evaluation
    registration: Registration
    tracking_uri: str


@flow(name="training_pipeline")
def training_pipeline(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None) -> PipelineResult:
    """Train, evaluate and register the video classifier of the project at `root`.

    `params_file` is relative to `root` (None: the defaults); `overrides` are `KEY.PATH=VALUE` strings.
    """
    layout = Layout(Path(root).resolve())
    params = load_params(layout.root / params_file if params_file else None, overrides or ())

    summary = validate_dataset(layout, params)
    create_table_artifact(summary.table(), key="validation-summary", description=f"clips of {params.dataset.name}: see {summary.quarantine}")
    extract_features(layout, params)
    train_classifier(layout, params)
    scores = evaluate_classifier(layout, params)
    registered = register_model(layout, params, {"vidops.prefect_flow_run_id": str(runtime.flow_run.id)})

    result = PipelineResult(summary, scores, registered, tracking(layout).uri)
    create_markdown_artifact(report(result), key="training-report", description="vidops training run")
    return result


def report(result: PipelineResult) -> str:
    """The run's markdown summary, for the Prefect UI."""
    s, m, r = result.summary, result.evaluation.metrics, result.registration
    return "\n".join([
        "# vidops training run",
        f"- clips: {s.clips}: {s.accepted} accepted ({s.warned} with warnings), {s.quarantined} quarantined (`{s.quarantine}`)",
        f"- test accuracy: {m['accuracy']:.3f} on {m['test_clips']} clips (chance {m['chance']:.3f})",
        f"- model: `{r.model_name}` version {r.version}, MLflow run `{r.run_id}` in `{result.tracking_uri}`",
        f"- champion: {'yes' if r.champion else 'no'}: {r.reason}",
    ])  # fmt: skip
