"""What the payload log stores and where, shared by serving (writes it), training and the release
gate (read it back, joined with the labels, to train or evaluate on what was served).

Layout under PAYLOAD_LOG_URI (`s3://<bucket>/<prefix>` or a local directory):

    <prefix>/predictions/date=YYYY-MM-DD/<UTC time>-<host>-<pid>-<seq>.jsonl.gz
    <prefix>/labels/date=YYYY-MM-DD/<UTC time>-<host>-<pid>-<seq>.jsonl.gz

Each object is gzip-compressed JSON Lines, one record per line:

    prediction: {"time", "endpoint", "request_id", "prediction_id", "model": {"name", "version"},
                 "features": {<name>: <number>}, "prediction", "probabilities": {<class>: p}}
    label:      {"time", "prediction_id", "label"}

`time` is UTC ISO 8601. Numbers are written so that they read back bit for bit. S3 access goes
through boto3 with what model loading uses: boto's credential chain (AWS_* variables, a web
identity, an instance profile...) and MLflow's MLFLOW_S3_ENDPOINT_URL, MLFLOW_S3_IGNORE_TLS and
MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

KINDS = ("predictions", "labels")
_DATE = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")
_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...
    def get(self, key: str) -> bytes: ...


def s3_client() -> Any:
    """A boto3 S3 client configured the way MLflow's S3 artifact repository configures its own."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        verify=False if os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() == "true" else None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")},
            connect_timeout=3,
            read_timeout=20,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


class S3Store:
    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.client = s3_client()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="application/gzip"
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


class DirStore:
    def __init__(self, root: Path) -> None:
        self.root, self.prefix = root, ""

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half an object

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*.jsonl.gz"))
        return sorted(found)

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


def parse_uri(uri: str) -> tuple[str, str] | Path:
    """(bucket, prefix) of `s3://bucket/prefix`, or the directory of `file:///dir` or `dir`;
    ValueError for anything else."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError("s3://<bucket>/<prefix> has no bucket")
        return bucket, prefix.strip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError("must be s3://<bucket>/<prefix> or a local directory")
    return Path(uri.removeprefix("file://"))


def open_store(uri: str) -> S3Store | DirStore:
    """The store of a PAYLOAD_LOG_URI."""
    where = parse_uri(uri)
    return DirStore(where) if isinstance(where, Path) else S3Store(*where)


def object_key(prefix: str, kind: str, at: float, writer: str, seq: int) -> str:
    when = datetime.fromtimestamp(at, UTC)
    name = f"{when:%Y%m%dT%H%M%S}.{when.microsecond:06d}Z-{writer}-{seq:06d}.jsonl.gz"
    return "/".join(p for p in (prefix, kind, f"date={when:%Y-%m-%d}", name) if p)


class ObjectBuilder:
    """One object, built a few records at a time: JSON Lines through a streaming gzip (level 1:
    a fifth of level 6's CPU for about 10 % more bytes; the log is written while serving)."""

    def __init__(self) -> None:
        self._gzip = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        self._parts: list[bytes] = []
        self.rows = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        self._parts.append(self._gzip.compress(_ENCODER.encode_lines(records)))
        self.rows += len(records)

    def finish(self) -> bytes:
        self._parts.append(self._gzip.flush())
        return b"".join(self._parts)


def encode(records: list[dict[str, Any]]) -> bytes:
    """One object holding `records`."""
    builder = ObjectBuilder()
    builder.add(records)
    return builder.finish()


def records(store: S3Store | DirStore, kind: str, since: str | None = None) -> Iterator[dict]:
    """Every record of `kind` ("predictions" or "labels"), oldest object first; `since`
    (YYYY-MM-DD) skips objects of earlier UTC dates."""
    base = "/".join(p for p in (store.prefix, kind) if p) + "/"
    for key in store.keys(base):
        m = _DATE.search("/" + key)
        if since and m and m.group(1) < since:
            continue
        for line in gzip.decompress(store.get(key)).splitlines():
            if line.strip():
                yield _DECODER.decode(line)


def labelled_rows(
    uri: str, feature_names: list[str], since: str | None = None
) -> tuple[list[list[float]], list[str], list[str], dict[str, int]]:
    """Served rows joined with their labels by prediction ID: (features in `feature_names`
    order, labels, prediction IDs, counts). The first label of an ID wins (a replica's dedupe
    is per replica, so the same label may be logged twice); a row without a label is skipped,
    as is a row logged twice or one whose features differ from `feature_names`."""
    store = open_store(uri)
    labels: dict[str, str] = {}
    n_labels = 0
    for record in records(store, "labels", since):
        n_labels += 1
        labels.setdefault(record["prediction_id"], record["label"])
    x: list[list[float]] = []
    y: list[str] = []
    ids: list[str] = []
    seen: set[str] = set()
    counts = {"predictions": 0, "labels": n_labels, "joined": 0, "other_features": 0}
    for record in records(store, "predictions", since):
        counts["predictions"] += 1
        pid = record["prediction_id"]
        if pid not in labels or pid in seen:
            continue
        features = record["features"]
        if set(features) != set(feature_names):
            counts["other_features"] += 1
            continue
        seen.add(pid)
        x.append([float(features[n]) for n in feature_names])
        y.append(labels[pid])
        ids.append(pid)
    counts["joined"] = len(ids)
    return x, y, ids, counts
