#!/usr/bin/env python3
"""Move an MLflow tracking store (runs, models, versions, aliases...) from one database to another,
e.g. the embedded sqlite of `make run` to PostgreSQL, and its artifacts to S3.

    mlflow db upgrade sqlite:///.local/mlflow/mlflow.db          # both schemas at MLflow's head
    mlflow db upgrade postgresql://mlflow@db.example:5432/mlflow   # (creates the tables)
    python scripts/mlflow_migrate.py \\
        --from sqlite:///.local/mlflow/mlflow.db --to postgresql://mlflow@db.example:5432/mlflow \\
        --artifacts-from .local/mlflow/artifacts --artifacts-to s3://mlflow-artifacts/mlflow

Rows are copied table by table in foreign-key order with their ids unchanged (run ids, model
versions and aliases stay valid), then PostgreSQL's id sequences are moved past the copied ids.
Artifacts are uploaded with MLflow's own artifact repository for the destination URI (S3 reads
MLFLOW_S3_ENDPOINT_URL and the AWS_* variables). Servers started with `--artifacts-destination`
(proxied artifacts, what `make run` uses) record `mlflow-artifacts:/...` locations, which stay
valid once the new server's `--artifacts-destination` holds the same tree; other locations can be
rewritten with `--rewrite-location OLD=NEW`. The password comes from PGPASSWORD (libpq), never
from the command line. docs/mlflow-platform.md walks through the whole move.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("mlflow_migrate")

# Columns that hold artifact locations (the only values --rewrite-location touches).
LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}
BATCH = 500


class MigrationError(Exception):
    pass


def _schema_version(conn, sa) -> str | None:
    try:
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.DBAPIError:
        return None


def _rewrite(table: str, row: dict, rewrites: list[tuple[str, str]]) -> dict:
    for column in LOCATION_COLUMNS.get(table, ()):
        value = row.get(column)
        for old, new in rewrites:
            if isinstance(value, str) and value.startswith(old):
                row[column] = new + value[len(old) :]
                break
    return row


def copy_rows(source_uri: str, target_uri: str, rewrites: list[tuple[str, str]]) -> dict[str, int]:
    """Copy every table of the source into the (empty, same-schema) target; rows per table."""
    import sqlalchemy as sa

    src_engine, dst_engine = sa.create_engine(source_uri), sa.create_engine(target_uri)
    src_meta, dst_meta = sa.MetaData(), sa.MetaData()
    src_meta.reflect(src_engine)
    dst_meta.reflect(dst_engine)
    with src_engine.connect() as src, dst_engine.begin() as dst:
        versions = (_schema_version(src, sa), _schema_version(dst, sa))
        if None in versions or versions[0] != versions[1]:
            raise MigrationError(
                f"schema versions differ or are missing (source {versions[0]}, target "
                f"{versions[1]}): run `mlflow db upgrade` on both databases first"
            )
        if dst.execute(sa.text("SELECT count(*) FROM experiments")).scalar():
            raise MigrationError("the target store already has experiments: use an empty database")
        counts: dict[str, int] = {}
        for table in dst_meta.sorted_tables:
            if table.name.startswith("alembic_version") or table.name not in src_meta.tables:
                continue
            src_table = src_meta.tables[table.name]
            columns = [c.name for c in table.columns if c.name in src_table.columns]
            # Rows the schema migrations seed (e.g. the default workspace) are already there.
            keys = [c.name for c in table.primary_key.columns]
            existing = set()
            if keys:
                existing = {tuple(r) for r in dst.execute(sa.select(*(table.c[k] for k in keys)))}
            rows = src.execute(sa.select(*(src_table.c[c] for c in columns))).mappings()
            batch, copied = [], 0
            for row in rows:
                item = _rewrite(table.name, dict(row), rewrites)
                if keys and tuple(item[k] for k in keys) in existing:
                    continue
                batch.append(item)
                if len(batch) >= BATCH:
                    dst.execute(table.insert(), batch)
                    copied, batch = copied + len(batch), []
            if batch:
                dst.execute(table.insert(), batch)
                copied += len(batch)
            counts[table.name] = copied
        if dst_engine.dialect.name == "postgresql":
            _advance_sequences(dst, dst_meta, sa)
    return counts


def _advance_sequences(conn, meta, sa) -> None:
    """Rows were inserted with explicit ids: serial/identity sequences must continue after them."""
    for table in meta.sorted_tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, sa.Integer):
                continue
            seq = conn.execute(
                sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                {"t": table.name, "c": column.name},
            ).scalar()
            if seq:
                top = conn.execute(sa.select(sa.func.max(column))).scalar() or 0
                conn.execute(sa.text("SELECT setval(:s, :v, false)"), {"s": seq, "v": top + 1})


def copy_artifacts(local_dir: Path, destination: str) -> int:
    """Upload a local artifact tree (e.g. `--artifacts-destination` of a local server) as is."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if not local_dir.is_dir():
        raise MigrationError(f"{local_dir} is not a directory")
    files = sum(1 for p in local_dir.rglob("*") if p.is_file())
    get_artifact_repository(destination).log_artifacts(str(local_dir))
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", required=True, help="source store URI (sqlite:///...)")
    p.add_argument("--to", dest="target", required=True, help="empty target store URI, upgraded")
    p.add_argument("--artifacts-from", type=Path, help="local artifact root to upload")
    p.add_argument("--artifacts-to", help="destination artifact root (s3://bucket/prefix)")
    p.add_argument(
        "--rewrite-location",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="replace a location prefix in the copied rows (repeatable)",
    )
    args = p.parse_args(argv)
    if bool(args.artifacts_from) != bool(args.artifacts_to):
        p.error("--artifacts-from and --artifacts-to go together")
    for item in args.rewrite_location:
        if "=" not in item:
            p.error(f"--rewrite-location {item!r}: expected OLD=NEW")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    rewrites = [tuple(item.split("=", 1)) for item in args.rewrite_location]
    try:
        counts = copy_rows(args.source, args.target, rewrites)
        log.info(
            "copied %d rows: %s",
            sum(counts.values()),
            ", ".join(f"{t}={n}" for t, n in sorted(counts.items()) if n),
        )
        if args.artifacts_from:
            files = copy_artifacts(args.artifacts_from, args.artifacts_to)
            log.info("uploaded %d artifact files to %s", files, args.artifacts_to)
    except MigrationError as exc:
        log.error("migration refused: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
