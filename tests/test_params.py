from pathlib import Path

import pytest

from vidops.components.errors import VidopsError
from vidops.components.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_yaml_spells_out_the_defaults():
    assert load_params(REPO / "params.yaml") == load_params(None)


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    params = load_params(
        None, ["train.classification.epochs=3", "train.classification.filters=[4, 8]", "datasets.classification=ucf"]
    )
    assert params.train.classification.epochs == 3
    assert params.train.classification.filters == (4, 8)
    assert params.datasets.classification == "ucf"


def test_unknown_key_is_named(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  classification:\n    epocs: 3\n")
    with pytest.raises(VidopsError, match=r"params.yaml: train\.classification\.epocs: unknown key"):
        load_params(path)


def test_wrong_type_is_named_and_not_coerced(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("extract:\n  classification:\n    frames: '8'\n")
    with pytest.raises(VidopsError, match=r"extract\.classification\.frames: Input should be a valid integer"):
        load_params(path)


def test_out_of_range_value_is_named():
    with pytest.raises(VidopsError, match=r"validation\.test_fraction: Input should be less than 1"):
        load_params(None, ["validation.test_fraction=1.5"])


@pytest.mark.parametrize(
    ("text", "message"),
    [("extract: [1, 2\n", "not valid YAML"), ("- a list\n", "expected a mapping of params groups")],
)
def test_malformed_file_names_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(VidopsError, match=message) as caught:
        load_params(path)
    assert str(path) in str(caught.value)


def test_missing_file_and_bad_override_are_errors(tmp_path: Path):
    with pytest.raises(VidopsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(VidopsError, match=r"expected KEY\.PATH=VALUE"):
        load_params(None, ["train.classification.epochs"])


def test_a_sync_window_that_cannot_fit_is_named_on_load():
    with pytest.raises(
        VidopsError,
        match=r"train\.sync\.window \+ 2 x train\.sync\.max_offset = 75 frames, but extract\.sync\.frames is 50",
    ):
        load_params(None, ["train.sync.window=15", "train.sync.max_offset=30", "extract.sync.frames=50"])
    with pytest.raises(VidopsError, match=r"extract\.sync\.sampler: the sync model needs consecutive frames"):
        load_params(None, ["extract.sync.sampler=uniform"])


def test_each_task_has_its_own_group_in_every_stage():
    params = load_params(None)
    for task in ("classification", "sync"):
        assert (
            params.datasets.of(task) and params.extract.of(task) and params.train.of(task) and params.registry.of(task)
        )
    assert params.registry.of("sync").model_name != params.registry.of("classification").model_name


@pytest.mark.parametrize("source", ["repository", "demo"])
def test_dvc_exp_run_set_changes_only_the_value_it_sets_in_params_yaml(source, tmp_path):
    """`dvc exp run -S` rewrites params.yaml through DVC's own YAML writer: the file keeps its form and comments."""
    from dvc.utils.hydra import apply_overrides

    from vidops.components.params import dump_params

    path = tmp_path / "params.yaml"
    path.write_text(
        (Path(__file__).parents[1] / "params.yaml").read_text()
        if source == "repository"
        else dump_params(load_params(None))
    )
    before = path.read_text().splitlines()
    apply_overrides(str(path), ["train.classification.epochs=5", "train.sync.filters=[8,16]"])
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(before) == len(after) and [new.split("#")[0].strip() for _, new in changed] == [
        "epochs: 5",
        "- 8",
        "- 16",
    ], changed


def test_each_task_gets_its_own_audio_checks():
    from vidops.components.validation import validation_checks

    params = load_params(None, ["validation.max_av_diff_fraction=0.3"])
    sync, classification = validation_checks(params, "sync"), validation_checks(params, "classification")
    assert (sync.require_audio, classification.require_audio, classification.warn_av_diff) == (True, False, True)
    assert classification.max_av_diff_fraction == 0.3
    assert not validation_checks(
        load_params(None, ["extract.classification.audio=none"]), "classification"
    ).warn_av_diff
    assert not validation_checks(load_params(None, ["validation.warn_av_diff=false"]), "classification").warn_av_diff
    with pytest.raises(VidopsError, match=r"validation\.max_av_diff_fraction: Input should be less than or equal to 1"):
        load_params(None, ["validation.max_av_diff_fraction=1.5"])


def test_set_reads_numbers_as_a_user_writes_them_and_names_a_value_yaml_cannot_read():
    assert (
        load_params(None, ["train.classification.learning_rate=1e-3"]).train.classification.learning_rate == 0.001
    )  # YAML 1.1: a string
    assert load_params(None, ["train.sync.learning_rate=2.5E-4"]).train.sync.learning_rate == 0.00025
    with pytest.raises(
        VidopsError, match=r"override 'train.classification.filters=\[8, 16': '\[8, 16' is not a value YAML can read"
    ):
        load_params(None, ["train.classification.filters=[8, 16"])
