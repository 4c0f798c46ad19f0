"""Ingest: clips that land under an S3 prefix join a dataset folder (data/raw/<dataset>/<label>/<clip>; a folder
whose manifest.csv lists its clips gets a row for each as well).

A key that is not `<label>/<clip>` (or has a hidden or `..` part) is never downloaded. Each
other landing object is downloaded and checked against what the listing said of it (its
size, and the MD5 its ETag carries), so a file that changed in between is refused, not
half-taken. Clips that the catalog reads and the dataset's checks pass are copied in, never
over a different file; versioning
(`dvc add`, `dvc push`) is `components.versioning`'s. Landing objects move only after that
version is pushed (`move`), so an ingest that fails leaves them where they were.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vidops.components.catalog import dataset_manifest, list_sources
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path
from vidops.components.probe import file_sha256

BLOCK = 8 * 2**20  # bytes read at a time
# a landed clip byte-identical to one the dataset has: done with, like an added one
ALREADY_IN = "already in the dataset"


@dataclass(frozen=True)
class LandingObject:
    """One object under the landing prefix, as the listing saw it."""

    key: str
    clip: str  # its path under the prefix: <label>/<clip>
    size: int
    etag: str


class Changed(VidopsError):
    """A landing object is not what the listing said: it changed between listing and download."""


def layout_problem(clip: str) -> str | None:
    """Why a landing object's path under the prefix cannot be a clip of the dataset, None when it can."""
    parts = clip.split("/")
    if len(parts) != 2 or any(not part or part.startswith(".") for part in parts):
        return "not <label>/<clip> (hidden and '..' names are refused): put each clip in a folder named after its label"
    return None


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, "prefix/")."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


def s3_client() -> Any:
    """boto3's S3 client; endpoint (AWS_ENDPOINT_URL), keys and region come from the environment, as for any AWS tool.

    A session of its own: `boto3.client` shares one default session, which keeps the first keys it read for the life of
    the process, so a long-lived `vidops serve` would miss rotated keys (and a test process the next server's)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}))


def list_landing(client: Any, url: str) -> list[LandingObject]:
    """Every object under the landing prefix, oldest first."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_url(url)
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += page.get("Contents", [])
    except ClientError as exc:
        raise VidopsError(
            f"{url}: cannot list the landing prefix: {exc.response['Error'].get('Code')}: "
            f"{exc.response['Error'].get('Message')}"
        ) from None
    except BotoCoreError as exc:
        raise OSError(f"{url}: cannot list the landing prefix: {exc}") from None  # the network's: a task may retry it
    found.sort(key=lambda o: (o["LastModified"], o["Key"]))
    return [
        LandingObject(o["Key"], o["Key"][len(prefix) :], int(o["Size"]), o["ETag"].strip('"'))
        for o in found
        if not o["Key"].endswith("/")
    ]


def download(client: Any, bucket: str, landed: LandingObject, folder: Path) -> Path:
    """The object, downloaded to folder/<label>/<clip>; Changed when its size or checksum is not the listing's."""
    from botocore.exceptions import BotoCoreError, ClientError

    if layout_problem(landed.clip):
        raise VidopsError(f"s3://{bucket}/{landed.key}: {layout_problem(landed.clip)}")
    path = folder / landed.clip
    with atomic_path(path) as tmp:
        try:
            client.download_file(bucket, landed.key, str(tmp))
        except ClientError as exc:
            if exc.response["Error"].get("Code") in ("404", "NoSuchKey"):
                raise Changed(f"s3://{bucket}/{landed.key}: gone since it was listed") from None
            raise
        except BotoCoreError as exc:
            # the network's: a task may retry it
            raise OSError(f"s3://{bucket}/{landed.key}: download failed: {exc}") from exc
        size = tmp.stat().st_size
        if size != landed.size:
            raise Changed(
                f"s3://{bucket}/{landed.key}: {size} bytes downloaded, {landed.size} listed: "
                "it changed since it was listed"
            )
        if _etag(client, bucket, landed, tmp) != landed.etag:
            raise Changed(
                f"s3://{bucket}/{landed.key}: its checksum is not the listed ETag {landed.etag}: "
                "it changed since it was listed"
            )
    return path


def _etag(client: Any, bucket: str, landed: LandingObject, path: Path) -> str:
    """The ETag S3 gives this content: its MD5, or for a multipart upload the MD5 of its parts' MD5s, '-N'
    (each part's size read from S3: uploaders need not make them equal)."""
    multipart = re.fullmatch(r"[0-9a-f]{32}-(\d+)", landed.etag)
    if not multipart:
        return _part_md5s(path, [path.stat().st_size])[0].hex()
    sizes = [
        client.head_object(Bucket=bucket, Key=landed.key, PartNumber=n)["ContentLength"]
        for n in range(1, int(multipart.group(1)) + 1)
    ]
    parts = _part_md5s(path, sizes)
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def _part_md5s(path: Path, sizes: list[int]) -> list[bytes]:
    """The MD5 of each successive part of the file, of the given sizes, read in blocks (a last part takes what is
    left)."""
    parts = []
    with path.open("rb") as f:
        for n, size in enumerate(sizes):
            digest, left = hashlib.md5(usedforsecurity=False), size if n < len(sizes) - 1 else None
            while block := f.read(BLOCK if left is None else min(BLOCK, left)):
                digest.update(block)
                if left is not None:
                    left -= len(block)
            parts.append(digest.digest())
    return parts


def add_clips(staged: Path, clips: list[str], dataset: Path) -> tuple[list[str], dict[str, str]]:
    """Copy the staged clips (<label>/<clip>) into the dataset folder at the same paths; when the folder's manifest.csv
    lists its clips, also append a row (path, label) for each. The clips added, and why others were not: a file or a
    row already there is never overwritten (the same content already there is already in)."""
    listing = dataset_manifest(dataset)
    listed = {source["path"] for source in list_sources(dataset)[1]} if listing else set()
    added, skipped = [], {}
    for clip in clips:
        source, target = staged / clip, dataset / clip
        same = target.is_file() and file_sha256(target) == file_sha256(source)
        if target.exists() and not same:
            skipped[clip] = f"{target} exists with other content; rename the clip and land it again"
        elif clip in listed and not same:
            skipped[clip] = f"{listing} already lists {clip} (its file is missing); rename the clip and land it again"
        elif same and (clip in listed or not listing):
            skipped[clip] = ALREADY_IN
        else:
            if not target.exists():
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
            added.append(clip)  # an unlisted copy of the same bytes (an ingest stopped before listing it) is listed now
    if listing and added:
        append_rows(listing, [{"path": clip, "label": clip.split("/")[0]} for clip in added])
    return added, skipped


def append_rows(listing: Path, rows: list[dict[str, str]]) -> None:
    """Append rows to a manifest CSV, atomically; the rows already there keep their bytes, other columns stay empty."""
    columns = [c.strip() for c in pd.read_csv(listing, dtype=str, nrows=0, encoding="utf-8-sig").columns]
    old = listing.read_bytes()
    newline = "\r\n" if b"\r\n" in old else "\n"
    text = io.StringIO()
    csv.writer(text, lineterminator=newline).writerows([row.get(column, "") for column in columns] for row in rows)
    with atomic_path(listing) as tmp:
        tmp.write_bytes(old + (b"" if old.endswith(b"\n") else newline.encode()) + text.getvalue().encode())


def move(client: Any, bucket: str, key: str, source_prefix: str, target_url: str) -> str:
    """Move an object from under `source_prefix` to the same place under `target_url` (copy, then delete); its new
    key."""
    from botocore.exceptions import BotoCoreError, ClientError

    target_bucket, target_prefix = split_url(target_url)
    new_key = target_prefix + key[len(source_prefix) :]
    try:
        client.copy({"Bucket": bucket, "Key": key}, target_bucket, new_key)
    except ClientError as exc:  # moved by an earlier try of this same move: done
        if exc.response["Error"].get("Code") not in ("404", "NoSuchKey") or not _exists(client, target_bucket, new_key):
            raise
    except BotoCoreError as exc:
        raise OSError(f"s3://{bucket}/{key}: move failed: {exc}") from exc  # the network's: a task may retry it
    client.delete_object(Bucket=bucket, Key=key)  # deleting what is gone succeeds
    return new_key


def _exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False
