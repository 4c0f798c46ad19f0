"""DVC on a real S3 server (SeaweedFS, started here on a free port): datasets pushed and pulled, a fresh clone that
pulls and reproduces every stage, experiments, and lineage from a registered model back to the dataset version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from corpus import encode
from vidops.components import versioning
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.stack.seaweedfs import project_s3

REPO = Path(__file__).resolve().parents[1]
MULTIPART = 100 * 2**20  # s3fs (under dvc-s3) uploads a file of this size or more in parts


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server with keys, on a free port: the client variables (endpoint, keys, region)."""
    with project_s3(Layout(tmp_path_factory.mktemp("s3"))) as env:
        yield env


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def use_remote(root: Path, env: dict[str, str], prefix: str) -> str:
    url = f"s3://vidops/{prefix}"
    versioning.set_remote(root, url, env["AWS_ENDPOINT_URL"], (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))
    return url


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def remote_key(prefix: str, md5: str) -> str:
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"  # DVC 3's layout of a remote


@pytest.mark.slow
def test_a_dataset_with_a_file_above_the_multipart_threshold_is_pushed_and_pulled_whole(s3, tiny_dataset, tmp_path):
    layout = Layout(tmp_path)
    dataset = layout.raw("demo")
    shutil.copytree(tiny_dataset, dataset)
    big = encode(
        dataset / "rotate" / "long_take.mp4", size=(1280, 720), frames=560, options={"preset": "ultrafast", "qp": "0"}
    )
    assert big.stat().st_size >= MULTIPART
    expected = digests(dataset)

    versioning.init(layout.root)
    use_remote(layout.root, s3, "dvc-push")
    assert "secret_access_key" not in (layout.root / ".dvc" / "config").read_text()  # keys only in config.local
    version = versioning.add(layout.root, dataset)
    assert version.md5 == versioning.current_version(layout.root, dataset) and version.files == len(expected)
    assert versioning.push(layout.root, [version.dvc_file], jobs=2) == len(expected) + 1  # the files, then the listing
    assert versioning.push(layout.root, [version.dvc_file]) == 0  # the remote has them all

    client = s3_client(s3)
    assert (
        client.head_object(Bucket="vidops", Key=remote_key("dvc-push", version.md5))["ContentLength"] > 0
    )  # the listing, last
    big_md5 = hashlib.md5(big.read_bytes()).hexdigest()
    assert "-" in client.head_object(Bucket="vidops", Key=remote_key("dvc-push", big_md5))["ETag"]  # uploaded in parts

    shutil.rmtree(dataset)
    shutil.rmtree(layout.root / ".dvc" / "cache")
    versioning.pull(layout.root)
    assert digests(dataset) == expected


def test_push_names_what_is_wrong_and_leaves_no_half_version_on_the_remote(s3, tiny_dataset, tmp_path):
    layout = Layout(tmp_path)
    shutil.copytree(tiny_dataset, layout.raw("demo"))
    versioning.init(layout.root)
    version = versioning.add(layout.root, layout.raw("demo"))
    with pytest.raises(VidopsError, match="no DVC remote is configured; `vidops data remote"):
        versioning.push(layout.root, [version.dvc_file])

    versioning.set_remote(
        layout.root, "s3://vidops/dvc-bad", s3["AWS_ENDPOINT_URL"], (s3["AWS_ACCESS_KEY_ID"], "not-the-secret")
    )
    with pytest.raises(VidopsError, match="refused the credentials"):
        versioning.push(layout.root, [version.dvc_file], tries=1)
    with pytest.raises(VidopsError, match="0: DVC's --jobs must be 1 or more"):
        versioning.push(layout.root, [version.dvc_file], jobs=0)

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    use_remote(layout.root, {**s3, "AWS_ENDPOINT_URL": down}, "dvc-down")
    with pytest.raises(
        VidopsError, match=r"failed 2 times .* the remote holds no listing of a version whose files did not all arrive"
    ):
        versioning.push(layout.root, [version.dvc_file], tries=2, wait_s=0.1)
    assert s3_client(s3).list_objects_v2(Bucket="vidops", Prefix="dvc-down/")["KeyCount"] == 0

    with pytest.raises(VidopsError, match="not an S3 URL"):
        versioning.set_remote(layout.root, "/tmp/elsewhere")
    with pytest.raises(VidopsError, match="not a DVC dataset version"):
        versioning.checkout(layout.root, layout.raw("demo"), "latest")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=vidops", "-c", "user.email=ci@vidops.invalid", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _dvc(root: Path, *args: str) -> str:
    done = versioning.dvc(root, *args, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_data_reproduces_every_stage_and_reruns_only_what_a_param_change_touches(
    s3, tiny_dataset, tiny_params, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )  # `vidops stage`, as in an activated venv
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the project as a user has it: vidops's dvc.yaml and components, params, a dataset; one task keeps it short
    origin = Layout(tmp_path / "origin")
    shutil.copytree(REPO / "components", origin.root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, origin.root / name)
    params = tiny_params.to_yaml_dict() | {"tasks": ["classification"], "datasets": {"classification": "demo"}}
    params["registry"]["register_experiments"] = (
        True  # the experiment below registers the version whose lineage is read
    )
    (origin.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_dataset, origin.raw("demo"))
    _git(origin.root, "init", "--quiet")
    versioning.init(origin.root)
    url = use_remote(origin.root, s3, "dvc-clone")
    version = versioning.add(origin.root, origin.raw("demo"))
    versioning.push(origin.root, [version.dvc_file])
    first = _dvc(origin.root, "repro")
    for stage in ("validate", "extract", "train", "evaluate", "register", "promote"):
        assert f"Running stage '{stage}@classification'" in first
    assert "Data and pipelines are up to date" in _dvc(origin.root, "repro")
    _dvc(origin.root, "push")  # the stages' outputs too, so a clone need not run them again
    _git(origin.root, "add", "-A")
    _git(origin.root, "commit", "--quiet", "-m", "dataset v1 and a pipeline run")
    tracked = _git(origin.root, "ls-files")
    assert {"data/raw/demo.dvc", "dvc.lock", "reports/classification/metrics.json"} <= set(
        tracked.split()
    ) and "config.local" not in tracked

    clone = Layout(tmp_path / "clone")
    _git(tmp_path, "clone", "--quiet", str(origin.root), str(clone.root))
    assert versioning.remote_url(clone.root) == url
    use_remote(clone.root, s3, "dvc-clone")  # this machine's endpoint and keys: .dvc/config.local
    _dvc(clone.root, "pull")
    assert digests(clone.raw("demo")) == digests(tiny_dataset)
    assert "Data and pipelines are up to date" in _dvc(clone.root, "repro")
    metrics = (clone.reports("classification") / "metrics.json").read_text()
    assert metrics == (origin.reports("classification") / "metrics.json").read_text()

    experiment = _dvc(clone.root, "exp", "run", "-S", "train.classification.epochs=1")
    for stage in ("validate", "extract"):
        assert f"Stage '{stage}@classification' didn't change, skipping" in experiment
    for stage in ("train", "evaluate", "register", "promote"):
        assert f"Running stage '{stage}@classification'" in experiment
    assert "train.classification.epochs" in _dvc(clone.root, "params", "diff")
    assert "reports/classification/metrics.json" in _dvc(clone.root, "metrics", "diff", "--all")
    plots = json.loads(versioning.dvc(clone.root, "plots", "diff", "--json").stdout)
    errors = [
        e for e in plots.get("errors") or [] if not e["source"].startswith("reports/sync/")
    ]  # this project has no sync task
    assert not errors and {"training curves", "reports/classification/confusion.csv"} <= set(plots["data"]), errors

    clone_registry = MlflowClient(f"sqlite:///{clone.state / 'mlflow.db'}")
    assert (
        len(clone_registry.search_model_versions("name='vidops-classifier'")) == 1
    )  # the experiment's; the no-op repro registered none

    # lineage: the version the experiment registered names the dataset version the origin pushed, and the commit
    lineage = subprocess.run(
        [sys.executable, "-m", "vidops", "lineage", "models:/vidops-classifier/1", "--root", str(clone.root)],
        capture_output=True,
        text=True,
    )
    assert f"data/raw/demo, DVC version {version.md5}" in lineage.stdout, lineage.stderr
    assert f"git commit {_git(clone.root, 'rev-parse', 'HEAD').strip()}" in lineage.stdout

    # a clip lost from the dataset comes back when the model's dataset version is checked out
    lost = sorted(clone.raw("demo").rglob("*.mp4"))[0]
    lost.unlink()
    checkout = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidops",
            "lineage",
            "models:/vidops-classifier/1",
            "--checkout",
            "--root",
            str(clone.root),
        ],
        capture_output=True,
        text=True,
    )
    assert checkout.returncode == 0 and f"checked out data/raw/demo at {version.md5}" in checkout.stdout, (
        checkout.stderr
    )
    assert digests(clone.raw("demo")) == digests(tiny_dataset)


def test_a_landing_object_that_changed_after_it_was_listed_is_refused(s3, tmp_path):
    from vidops.components import ingest

    client = s3_client(s3)
    client.put_object(
        Bucket="vidops", Key="changing/landing/rotate/a.mp4", Body=encode(tmp_path / "a.mp4").read_bytes()
    )
    (listed,) = ingest.list_landing(client, "s3://vidops/changing/landing")
    assert listed.clip == "rotate/a.mp4"
    client.put_object(
        Bucket="vidops", Key=listed.key, Body=encode(tmp_path / "b.mp4", seed=1).read_bytes()
    )  # replaced meanwhile
    with pytest.raises(ingest.Changed, match=r"rotate/a.mp4: .*it changed since it was listed"):
        ingest.download(client, "vidops", listed, tmp_path / "staged")
    assert not list((tmp_path / "staged").rglob("*.mp4"))  # nothing half-taken


@pytest.mark.slow
def test_the_ingest_flow_takes_landed_clips_into_a_new_pushed_dataset_version(
    prefect_api, s3, tiny_dataset, tiny_params, tmp_path, monkeypatch
):
    from vidops.flows.ingest import ingest

    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    project = Layout(tmp_path / "project")
    shutil.copytree(tiny_dataset, project.raw("demo"))
    rule = {
        "task": "classification",
        "landing": "s3://vidops/in/landing",
        "processed": "s3://vidops/in/processed",
        "quarantine": "s3://vidops/in/quarantine",
        "commit": True,
    }
    (project.root / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict() | {"ingest": rule}))
    _git(project.root, "init", "--quiet")
    versioning.init(project.root)
    use_remote(project.root, s3, "dvc-ingest")
    before = versioning.add(project.root, project.raw("demo"))
    versioning.push(project.root, [before.dvc_file])

    client = s3_client(s3)
    new = {
        "rotate/new_rotate.mp4": encode(tmp_path / "new1.mp4", seed=11, size=(64, 64), frames=25),
        "left/new_left.mp4": encode(
            tmp_path / "new2.mp4", seed=12, size=(640, 480), frames=120, options={"preset": "ultrafast", "qp": "0"}
        ),
    }
    assert new["left/new_left.mp4"].stat().st_size > 8 * 2**20  # boto3 uploads it in parts: its ETag is not a plain MD5
    for clip, path in new.items():
        client.upload_file(str(path), "vidops", f"in/landing/{clip}")
    client.put_object(Bucket="vidops", Key="in/landing/rotate/notes.mp4", Body=b"meeting notes, not a video")
    client.put_object(Bucket="vidops", Key="in/landing/stray.mp4", Body=new["rotate/new_rotate.mp4"].read_bytes())
    client.put_object(Bucket="vidops", Key="in/landing/rotate/.hidden.mp4", Body=b"not seen by the catalog")
    original = sorted(project.raw("demo").rglob("*.mp4"))[0]  # a clip of the dataset, landed again under a new name
    client.put_object(Bucket="vidops", Key="in/landing/zoom_in/a_new_name.mp4", Body=original.read_bytes())

    with monkeypatch.context() as m:
        m.setenv("GIT_AUTHOR_NAME", "vidops"), m.setenv("GIT_AUTHOR_EMAIL", "ci@vidops.invalid")
        m.setenv("GIT_COMMITTER_NAME", "vidops"), m.setenv("GIT_COMMITTER_EMAIL", "ci@vidops.invalid")
        result = ingest(root=str(project.root))

    assert sorted(result.added) == sorted(new) and result.landed == 6
    twin = original.relative_to(project.raw("demo")).as_posix()
    assert f"byte-identical to {twin}, already in the dataset" in result.quarantined["zoom_in/a_new_name.mp4"]
    assert (
        original.is_file() and not (project.raw("demo") / "zoom_in" / "a_new_name.mp4").exists()
    )  # the original keeps its place
    assert (
        "unreadable" in result.quarantined["rotate/notes.mp4"]
        and "not <label>/<clip>" in result.quarantined["stray.mp4"]
    )
    assert (
        "hidden" in result.quarantined["rotate/.hidden.mp4"]
        and not (project.raw("demo") / "rotate" / ".hidden.mp4").exists()
    )
    assert not (project.raw("demo") / "rotate" / "notes.mp4").exists()
    for clip, path in new.items():
        assert (project.raw("demo") / clip).read_bytes() == path.read_bytes()
    after = versioning.read_version(project.raw("demo"))
    assert result.version == after.md5 != before.md5 and after.files == before.files + 2
    assert result.commit == _git(project.root, "rev-parse", "HEAD").strip()
    assert "data/raw/demo.dvc" in _git(project.root, "show", "--name-only", "HEAD")
    assert client.head_object(Bucket="vidops", Key=remote_key("dvc-ingest", after.md5))  # pushed before anything moved
    keys = lambda prefix: sorted(
        o["Key"] for o in client.list_objects_v2(Bucket="vidops", Prefix=prefix).get("Contents", [])
    )
    assert keys("in/landing/") == []
    assert keys("in/processed/") == sorted(f"in/processed/{clip}" for clip in new)
    assert keys("in/quarantine/") == [
        "in/quarantine/rotate/.hidden.mp4",
        "in/quarantine/rotate/notes.mp4",
        "in/quarantine/stray.mp4",
        "in/quarantine/zoom_in/a_new_name.mp4",
    ]
    assert Path(result.report).is_file()

    client.put_object(Bucket="vidops", Key="in/landing/left/junk.mp4", Body=b"junk")
    only_junk = ingest(
        root=str(project.root)
    )  # nothing to add: no new version, nothing to commit, the junk quarantined
    assert only_junk.added == [] and only_junk.version is None and "left/junk.mp4" in only_junk.quarantined
    assert versioning.read_version(project.raw("demo")).md5 == after.md5 and keys("in/landing/") == []
    assert ingest(root=str(project.root)).landed == 0  # nothing landed since


def test_checking_out_a_version_never_destroys_work_that_no_version_holds(tiny_dataset, tmp_path):
    project = Layout(tmp_path / "project")
    shutil.copytree(tiny_dataset, project.raw("demo"))
    versioning.init(project.root)
    version = versioning.add(project.root, project.raw("demo"))
    new, edited = project.raw("demo") / "rotate" / "never-versioned.mp4", sorted(project.raw("demo").rglob("*.mp4"))[0]
    new.write_bytes(b"a clip of the user's own")
    edited.write_bytes(edited.read_bytes() + b"an edit")
    before = digests(project.raw("demo"))
    with pytest.raises(
        VidopsError, match=r"2 file\(s\) there are in no DVC version.*never-versioned.mp4.*--force"
    ) as refused:
        versioning.checkout(project.root, project.raw("demo"), version.md5)
    assert edited.relative_to(project.raw("demo")).as_posix() in str(refused.value)
    assert digests(project.raw("demo")) == before  # refused before anything changed
    versioning.checkout(project.root, project.raw("demo"), version.md5, force=True)
    assert digests(project.raw("demo")) == digests(tiny_dataset)  # asked for: the version, exactly


def test_dvc_commands_run_in_callers_folder_and_environment_and_one_stopped_or_a_lost_helper_leaves_the_next_working(
    tmp_path, monkeypatch
):
    from vidops.components import dvc_launcher

    root = tmp_path / "project"
    root.mkdir()
    versioning.init(root)
    stages = {
        "hello": {"cmd": "echo $VIDOPS_PROBE > hello.txt", "outs": [{"hello.txt": {"cache": False}}]},
        "sleepy": {"cmd": "sleep 5"},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    monkeypatch.setenv("VIDOPS_PROBE", "set after the helper started")
    versioning.dvc(root, "repro", "hello")
    assert (root / "hello.txt").read_text() == "set after the helper started\n"
    assert versioning.dvc(root, "nonsense", check=False).returncode == 254  # DVC's own exit code for a bad command
    with pytest.raises(VidopsError, match=r"dvc add missing in .* failed: ERROR: output 'missing' does not exist"):
        versioning.dvc(root, "add", "missing")

    # a command stopped by its caller is killed at once, and says why
    with pytest.raises(dvc_launcher.Stopped, match="the server went away"):
        dvc_launcher.run(root, ["repro", "sleepy"], os.environ, stop=lambda: "the server went away", poll_s=0.1)
    assert "up to date" in versioning.dvc(root, "status", "hello").stdout

    # the helper lost mid-command is an error that names it; the next command starts another
    helper = dvc_launcher._helper
    with pytest.raises(VidopsError, match=rf"the process that runs DVC's commands \(pid {helper.pid}\) stopped"):
        dvc_launcher.run(root, ["repro", "sleepy"], os.environ, stop=lambda: helper.kill(), poll_s=0.1)
    assert "up to date" in versioning.dvc(root, "status", "hello").stdout
    assert dvc_launcher._helper.pid != helper.pid
