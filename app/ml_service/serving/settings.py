"""Serving settings: plain environment variables (no prefix), validated by pydantic-settings.

Every field's description is the user-facing documentation: the settings tables of README.md and
docs/api.md are generated from this class (`make docs`), and a test fails when they are stale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="`critical`, `error`, `warning`, `info`, `debug` or `trace`"
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
    keepalive_timeout_seconds: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this time"
    )
    max_connections: int = Field(
        512,
        ge=8,
        description="open connections at most (also kept below the open-file limit); a new "
        "connection beyond it closes the longest-idle one, or gets 503 if none is idle",
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
        description="then: the most time in-flight requests get to finish (503 after it)",
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.model_load_backoff_initial_seconds > self.model_load_backoff_max_seconds:
            raise ValueError(
                "MODEL_LOAD_BACKOFF_INITIAL_SECONDS must not exceed MODEL_LOAD_BACKOFF_MAX_SECONDS"
            )
        return self
