"""Serving settings: plain environment variables (no prefix), validated by pydantic-settings.

Every field's description is the user-facing documentation: the settings table of docs/api.md is
generated from this class (`make docs`), and a test fails when it is stale; the chart's values that
set one (values.yaml, `_helpers.tpl` configData) repeat its default, bounds and description, checked
by tests/unit/test_chart_settings.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml_service.payload_format import parse_uri


class Settings(BaseSettings):
    """Every knob of the serving process."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        # MODEL_URI & co. would otherwise clash with pydantic's protected `model_` namespace.
        protected_namespaces=(),
    )

    model_uri: str = Field(
        "models:/ml-service@champion",
        min_length=1,
        description="`models:/<name>@<alias>`, `models:/<name>/<version>`, or a local model "
        "directory (the published image sets it to its baked demo model)",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="tracking/registry server for `models:/` URIs; credentials through MLflow's "
        "own `MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`",
    )
    model_name: str | None = Field(
        None, description="label for a model served from a local directory (default: its name)"
    )
    model_version: str | None = Field(
        None, description="label for a model served from a local directory (default: `local`)"
    )
    host: str = Field("127.0.0.1", description="listen address (the image sets `0.0.0.0`)")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    probe_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="port of the probe listener: `/health`, `/ready` and `/metrics` for the "
        "kubelet and Prometheus, on its own thread and connection budget, so no client traffic "
        "can crowd or delay them (the chart's Service does not expose it)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="log level: `critical`, `error`, `warning`, `info`, `debug` or `trace`"
    )
    access_log: bool = Field(
        False, description="one log line per request (the metrics already count every request)"
    )
    max_request_bytes: int = Field(
        1_048_576, ge=1024, description="largest accepted request body (413 above)"
    )
    max_batch_rows: int = Field(1000, ge=1, description="most rows per request (413 above)")
    request_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="a connection must deliver complete request headers within this time of "
        "opening (or of its previous response); otherwise it is closed",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        description="most bytes of request line and headers per request (431 and close above)",
    )
    request_body_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="the whole request body must arrive within this time (408 and close above)",
    )
    response_write_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="a client must take each response within this time of it being written; "
        "otherwise the connection is aborted and its slot freed",
    )
    keepalive_timeout_seconds: float = Field(
        75.0,
        gt=0,
        description="an idle keep-alive connection is closed after this time; above the idle "
        "timeout of the clients' pools (a load balancer's is often 60 s), so they close first: "
        "a request sent just as the server closes the connection is lost",
    )
    max_connections: int = Field(
        512,
        ge=8,
        description="open connections at most (also kept below the open-file limit); a new "
        "connection beyond it closes the longest-idle one, or gets 503 if none is idle",
    )
    admission_min_concurrency: int = Field(
        64,
        ge=1,
        description="adaptive admission: the concurrency limit of POST requests (in flight "
        "from headers to answer, each costing 1 plus 1 per 256 KiB of body) never goes below "
        "this; up to it, concurrent clients (with bodies under 256 KiB) are queued, never "
        "refused",
    )
    admission_max_concurrency: int = Field(
        512,
        ge=0,
        description="adaptive admission: the outer bound of the limit, however fast answers "
        "come; beyond the limit a POST gets a 503 with `Retry-After` before its body is read; "
        "`0` turns admission control off",
    )
    admission_tolerance: float = Field(
        3.0,
        gt=1,
        le=100,
        description="adaptive admission: the limit shrinks while the mean latency of a window "
        "exceeds this many times the latency without queueing (the baseline), and grows "
        "while it stays below",
    )
    admission_window: int = Field(
        50, ge=1, le=100_000, description="adaptive admission: answered requests per window"
    )
    model_load_backoff_initial_seconds: float = Field(
        0.5, gt=0, description="first retry delay while the model cannot be loaded"
    )
    model_load_backoff_max_seconds: float = Field(
        30.0, gt=0, description="cap of the exponential backoff (delays double, ±20 % jitter)"
    )
    retry_after_seconds: int = Field(
        5, ge=1, description="`Retry-After` on 503 while no model is loaded or shutting down"
    )
    shutdown_drain_seconds: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM: how long `/ready` answers 503 (and every response says "
        "`Connection: close`) while the port stays open, so load balancers stop routing first",
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="after the drain: the most time in-flight requests get to finish "
        "(503 after it)",
    )
    numeric_threads: int = Field(
        1, ge=1, le=64, description="OpenMP/BLAS threads of the inference thread"
    )
    microbatch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="micro-batching: how long a batch may wait for more rows once two or more "
        "requests are queued (a lone request never waits); `0` turns it off",
    )
    microbatch_max_rows: int = Field(256, ge=1, description="most rows in one micro-batch")
    prediction_signing_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="key (at least 32 characters, from a Secret) that signs prediction IDs; "
        "turns on `request_id` and `prediction_id` in answers, `POST /feedback` and the live "
        "quality metrics. Unset: none of them, and every answer is as without this feature",
    )
    prediction_signing_secret_previous: SecretStr | None = Field(
        None,
        min_length=32,
        description="the key before a rotation: prediction IDs it signed are still accepted by "
        "`/feedback` (new ones are signed with `PREDICTION_SIGNING_SECRET`)",
    )
    prediction_id_ttl_seconds: int = Field(
        30 * 86400,
        ge=60,
        description="how long `/feedback` accepts a prediction ID after it was issued",
    )
    feedback_max_items: int = Field(
        1000, ge=1, description="most labels per `/feedback` request (413 above)"
    )
    feedback_dedupe_seconds: float = Field(
        86400.0,
        gt=0,
        description="a label for a prediction ID this replica already counted within this time "
        "is answered as a duplicate and not counted again",
    )
    feedback_dedupe_max_ids: int = Field(
        200_000,
        ge=2,
        description="most prediction IDs remembered for duplicate detection (about 80 bytes "
        "each); past it, the oldest half is forgotten sooner than `FEEDBACK_DEDUPE_SECONDS`",
    )
    payload_log_uri: str | None = Field(
        None,
        description="where the payload log writes: `s3://<bucket>/<prefix>` (credentials and "
        "endpoint as for model loading: boto's chain, `MLFLOW_S3_ENDPOINT_URL`) or a local "
        "directory. Unset: no payload log. Needs `PREDICTION_SIGNING_SECRET`",
    )
    payload_log_sample: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of prediction requests whose rows the payload log keeps",
    )
    payload_log_batch_rows: int = Field(
        10_000, ge=1, description="rows per payload-log object at most"
    )
    payload_log_flush_seconds: float = Field(
        60.0,
        gt=0,
        description="a payload-log object is written at the latest this long after its first row",
    )
    payload_log_queue_rows: int = Field(
        50_000,
        ge=1,
        description="rows waiting to be written at most; beyond it rows are dropped and counted "
        "(`mlservice_payload_log_dropped_rows_total`), the request is never slowed",
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.port and self.port == self.probe_port:
            raise ValueError("PROBE_PORT must differ from PORT")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("payload_log_uri")
    @classmethod
    def _payload_log_uri(cls, value: str | None) -> str | None:
        if value:
            parse_uri(value)  # ValueError: "must be s3://<bucket>/<prefix> or a local directory"
        return value or None

    @model_validator(mode="after")
    def _admission_bounds(self) -> Settings:
        if 0 < self.admission_max_concurrency < self.admission_min_concurrency:
            raise ValueError(
                "ADMISSION_MIN_CONCURRENCY must not exceed ADMISSION_MAX_CONCURRENCY "
                "(0 turns admission control off)"
            )
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.model_load_backoff_initial_seconds > self.model_load_backoff_max_seconds:
            raise ValueError(
                "MODEL_LOAD_BACKOFF_INITIAL_SECONDS must not exceed MODEL_LOAD_BACKOFF_MAX_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _payload_log_needs_ids(self) -> Settings:
        if self.payload_log_uri and self.prediction_signing_secret is None:
            raise ValueError(
                "PAYLOAD_LOG_URI needs PREDICTION_SIGNING_SECRET: the log is joined with labels "
                "by prediction ID"
            )
        return self


def load() -> Settings:
    """The settings of this process's environment. An invalid one stops the process with a
    message naming the variable and the rule, never the value (some are secrets)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise SystemExit("invalid settings:\n  " + "\n  ".join(problems)) from None
