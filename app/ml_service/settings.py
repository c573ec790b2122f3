"""Serving settings: plain environment variables (no prefix), validated by pydantic-settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the serving process; `docs/api.md` lists them for users."""

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
        description="models:/<name>@<alias>, models:/<name>/<version> or a local model directory",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server; credentials via MLflow's own env vars"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    access_log: bool = Field(False, description="uvicorn access log (metrics cover traffic)")
    max_request_bytes: int = Field(1_048_576, ge=1024)
    max_batch_rows: int = Field(1000, ge=1)
    model_load_backoff_max_seconds: float = Field(30.0, gt=0)
    model_load_backoff_initial_seconds: float = Field(0.5, gt=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    # Time between SIGTERM (readiness turns 503) and closing the listener, so that load balancers
    # stop sending traffic before the port closes. SIGINT (Ctrl-C) skips it.
    shutdown_drain_seconds: float = Field(5.0, ge=0)
    numeric_threads: int = Field(1, ge=1, le=64)
    # 2 ms: ~5x the 1-row throughput at concurrency 50, no cost at concurrency 1
    # (docs/benchmarks.md); 0 turns micro-batching off.
    microbatch_wait_ms: float = Field(2.0, ge=0, le=1000)
    microbatch_max_rows: int = Field(256, ge=1)
    model_name: str | None = Field(None, description="label for a local model directory")
    model_version: str | None = Field(None, description="label for a local model directory")
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After on 503 while no model")

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

    @property
    def is_registry_uri(self) -> bool:
        return self.model_uri.startswith("models:/")
