"""MLflow the way teams run it, for tests: a real PostgreSQL, a real S3 server (MinIO) and
an `mlflow server` on top of them, all on free 127.0.0.1 ports.

- `Postgres`: Debian's server binaries (`initdb`, `postgres`), a cluster in a temp dir owned by an
  unprivileged user (PostgreSQL refuses to run as root), password auth (scram-sha-256), TCP only.
- `Minio`: the `minio` binary that `make setup-platform` builds from its Go module.
- `platform_mlflow_server()`: `mlflow server` with `--backend-store-uri postgresql://...` and an S3
  artifact root, proxied (`--artifacts-destination s3://...`, clients hold no S3 credential) or
  direct (`--default-artifact-root s3://... --no-serve-artifacts`, clients read S3 themselves),
  optionally behind MLflow's basic-auth app.

Every secret is a random sentinel handed over in the environment variables MLflow, libpq and boto
read (`PGPASSWORD`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `MLFLOW_TRACKING_USERNAME`/
`MLFLOW_TRACKING_PASSWORD`...), never in a URI or a command line, so tests can grep every log and
response for them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .mlflow import QUIET_MLFLOW_ENV, MlflowServer
from .net import free_port, wait_http
from .poll import wait_until
from .procs import spawn, stop_group, tail

ROOT = Path(__file__).resolve().parents[2]
MINIO_BIN = ROOT / ".tools" / "bin" / "minio"
SETUP_HINT = "run `make setup` (or `make setup-platform`)"
BUCKET = "mlflow"


class PlatformToolMissingError(RuntimeError):
    pass


def sentinel(label: str) -> str:
    """A secret that is easy to grep for and impossible to meet by chance."""
    return f"{label}S3nt1nel{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Credentials:
    """Every secret of one platform: database, S3, MLflow basic auth, Flask session key."""

    db_password: str = field(default_factory=lambda: sentinel("pg"))
    s3_access_key: str = field(default_factory=lambda: sentinel("AK"))
    s3_secret_key: str = field(default_factory=lambda: sentinel("sk"))
    mlflow_password: str = field(default_factory=lambda: sentinel("mlf"))
    flask_secret: str = field(default_factory=lambda: sentinel("flask"))
    db_user: str = "mlflow"
    mlflow_user: str = "admin"

    def values(self) -> dict[str, str]:
        """name -> secret value, for the sentinel test."""
        return {
            "db_password": self.db_password,
            "s3_access_key": self.s3_access_key,
            "s3_secret_key": self.s3_secret_key,
            "mlflow_password": self.mlflow_password,
            "flask_secret": self.flask_secret,
        }

    def s3_env(self, endpoint: str) -> dict[str, str]:
        """What boto3 and MLflow's S3 artifact repository read."""
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            # botocore must never look for an instance metadata service (a 169.254.x address).
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def mlflow_client_env(self) -> dict[str, str]:
        """What an MLflow client (training, the app) reads for basic auth."""
        return {
            "MLFLOW_TRACKING_USERNAME": self.mlflow_user,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
        }


# ---------------------------------------------------------------- running as an unprivileged user


def service_user() -> pwd.struct_passwd | None:
    """Who the servers run as: ourselves when unprivileged, else Debian's `postgres`/`nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PlatformToolMissingError("running as root and neither `postgres` nor `nobody` exists")


def _as_user(user: pwd.struct_passwd | None) -> dict:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def private_dir(prefix: str, user: pwd.struct_passwd | None) -> Path:
    """A 0700 temp dir under the system temp root (pytest's own dirs are root-only) owned by
    `user`, so the unprivileged server can reach and write it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)


def reachable_binary(binary: Path, root: Path, user: pwd.struct_passwd | None) -> Path:
    """`binary` as `user` can execute it: the checkout may sit under a directory that user
    cannot enter (a 0700 home or temp dir), so a hard link (or a copy) goes into `root`, the
    user's own directory."""
    if user is None:
        return binary
    target = root / binary.name
    try:
        os.link(binary, target)
    except OSError:  # another filesystem
        shutil.copy2(binary, target)
    return target


# ---------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """Debian installs the server binaries under /usr/lib/postgresql/<major>/bin, not on PATH."""
    if env := os.environ.get("PG_BIN_DIR"):
        return Path(env)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PlatformToolMissingError(f"PostgreSQL server binaries not found: {SETUP_HINT}")


class Postgres:
    """One PostgreSQL cluster: initdb once, then start/stop/restart on the same port and data."""

    def __init__(self, creds: Credentials, port: int | None = None) -> None:
        self.creds = creds
        self.user = service_user()
        self.bin = postgres_bin_dir()
        self.root = private_dir("mlsvc-pg-", self.user)
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self._init()

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=120, check=False,
            cwd=self.root, **_as_user(self.user), **kwargs,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def _init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.creds.db_password + "\n")
        pwfile.chmod(0o600)
        _chown_tree(self.root, self.user)
        try:
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", self.creds.db_user,
                "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
                "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """libpq reads the password from PGPASSWORD: it stays out of URIs and command lines."""
        return {"PGPASSWORD": self.creds.db_password}

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://{self.creds.db_user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        cmd = [
            str(self.bin / "postgres"), "-D", str(self.data),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
            # TCP only: no socket file outside the temp dir.
            "-c", "unix_socket_directories=",
            # A throw-away cluster: durability across a machine crash buys nothing here.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "log_connections=on", "-c", "log_disconnections=on",
        ]  # fmt: skip
        self.process = spawn(cmd, log_path=self.log_path, cwd=self.root, **_as_user(self.user))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import psycopg

        def accepting() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
            return True

        wait_until(accepting, timeout, "postgres accepting connections", 0.2, self.log_tail,
                   retry=(psycopg.OperationalError,), error=TimeoutError)  # fmt: skip

    def dsn(self, database: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={database} user={self.creds.db_user} "
            f"password={self.creds.db_password}"
        )

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn(database), connect_timeout=5, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are cut, like a pod being replaced."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_group(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self) -> str:
        return tail(self.log_path)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- MinIO


class Minio:
    """A single-drive MinIO server; stop/start keeps its data (the fault tests need that)."""

    def __init__(self, creds: Credentials, binary: Path = MINIO_BIN) -> None:
        if not binary.is_file():
            raise PlatformToolMissingError(f"{binary} is missing: {SETUP_HINT}")
        self.creds = creds
        self.user = service_user()
        self.root = private_dir("mlsvc-minio-", self.user)
        (self.root / "data").mkdir()
        (self.root / "certs").mkdir()
        _chown_tree(self.root, self.user)
        # after the chown, which would hand the linked original to the service user
        self.binary = reachable_binary(binary, self.root, self.user)
        self.log_path = self.root / "minio.log"
        self.port = free_port()
        self.console_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "MINIO_ROOT_USER": self.creds.s3_access_key,
            "MINIO_ROOT_PASSWORD": self.creds.s3_secret_key,
            # Nothing leaves the machine: no update check, no console, no call-home.
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        }
        cmd = [
            str(self.binary), "server", str(self.root / "data"),
            "--address", f"127.0.0.1:{self.port}",
            "--console-address", f"127.0.0.1:{self.console_port}",
            "--certs-dir", str(self.root / "certs"),
        ]  # fmt: skip
        self.process = spawn(cmd, log_path=self.log_path, env=env, cwd=self.root,
                             **_as_user(self.user))  # fmt: skip
        wait_http(f"{self.endpoint}/minio/health/ready", timeout=timeout, proc=self.process,
                  log=self.log_path)  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=20)

    def client(self, **overrides: str):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=overrides.get("access_key", self.creds.s3_access_key),
            aws_secret_access_key=overrides.get("secret_key", self.creds.s3_secret_key),
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def log_tail(self) -> str:
        return tail(self.log_path)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- mlflow server on top


@dataclass(frozen=True)
class PlatformServer(MlflowServer):
    mode: str = "proxied"  # proxied | direct
    artifact_uri: str = ""
    auth: bool = False
    client_env: dict = field(default_factory=dict, compare=False, repr=False)


def server_env(
    creds: Credentials, pg: Postgres, minio: Minio, auth: bool, auth_ini: Path | None
) -> dict[str, str]:
    env = {**os.environ, **QUIET_MLFLOW_ENV, **pg.env(), **creds.s3_env(minio.endpoint)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if auth:
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
            MLFLOW_AUTH_ADMIN_USERNAME=creds.mlflow_user,
            MLFLOW_AUTH_ADMIN_PASSWORD=creds.mlflow_password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=creds.flask_secret,
        )
    return env


@contextlib.contextmanager
def platform_mlflow_server(
    data_dir: Path,
    *,
    creds: Credentials,
    pg: Postgres,
    minio: Minio,
    database: str,
    mode: str = "proxied",
    auth: bool = True,
    prefix: str | None = None,
    timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[PlatformServer]:
    """`mlflow server` on PostgreSQL database `database` and s3://mlflow/<prefix>; `extra_env`
    adds server settings (charts/mlflow-platform's, say)."""
    assert mode in ("proxied", "direct"), mode
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / f"mlflow-{mode}-{port}.log"
    store = pg.uri(database)
    artifact_uri = f"s3://{BUCKET}/{prefix or database}"
    auth_ini = None
    if auth:
        # The auth app keeps its users in the same database (own alembic table); the admin
        # user and password come from MLFLOW_AUTH_ADMIN_* (server_env), not from this file.
        auth_ini = data_dir / f"basic_auth-{port}.ini"
        auth_ini.write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {store}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", store,
    ]  # fmt: skip
    if mode == "proxied":
        cmd += ["--artifacts-destination", artifact_uri]
    else:
        cmd += ["--default-artifact-root", artifact_uri, "--no-serve-artifacts"]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    env = {**server_env(creds, pg, minio, auth, auth_ini), **(extra_env or {})}
    proc = spawn(cmd, log_path=log_path, env=env, cwd=data_dir)
    client_env = dict(creds.mlflow_client_env() if auth else {})
    if mode == "direct":
        client_env.update(creds.s3_env(minio.endpoint))
    url = f"http://127.0.0.1:{port}"
    server = PlatformServer(url, port, data_dir, log_path, proc, mode, artifact_uri, auth,
                            client_env)  # fmt: skip
    try:
        wait_http(f"{url}/health", timeout=timeout, proc=proc, log=log_path)
        yield server
    finally:
        stop_group(proc)
