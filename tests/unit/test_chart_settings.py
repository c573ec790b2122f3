"""The chart's server values are the app's settings: `Settings` (serving/settings.py) is the home of
each one's default, bounds and description; every value the chart passes to a setting
(`_helpers.tpl` configData, the pods' environment: `ENV: {{ .Values.<key> }}`) must say the same
in values.yaml, so a bad value fails `helm install` (values.schema.json, generated from
values.yaml) and not the pod."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from ml_service.serving.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "charts" / "ml-service"
PASSED = re.compile(r"^(?P<env>[A-Z][A-Z0-9_]*): \{\{ \.Values\.(?P<key>[\w.]+)", re.M)
# Values the chart passes on with a meaning of the chart's own.
NOT_SETTINGS_DEFAULTS = {
    "MODEL_NAME": "model.name is the registered model's name, passed as the label of a model.uri",
}
BOUNDS = {
    annotated_types.Ge: ("minimum", "ge"),
    annotated_types.Gt: ("exclusiveMinimum", "gt"),
    annotated_types.Le: ("maximum", "le"),
    annotated_types.Lt: ("exclusiveMaximum", "lt"),
    annotated_types.MinLen: ("minLength", "min_length"),
}


def passed_settings() -> dict[str, str]:
    """ENV -> values key, for every setting the chart takes from a value."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    config = helpers.split('{{- define "ml-service.configData" -}}', 1)[1].split("{{- define ")[0]
    return {m["env"]: m["key"] for m in PASSED.finditer(config)}


def lookup(tree: dict, key: str, schema: bool = False):  # type: ignore[no-untyped-def]
    for part in key.split("."):
        tree = tree["properties"][part] if schema else tree[part]
    return tree


VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHECKED = {env: key for env, key in passed_settings().items() if env not in NOT_SETTINGS_DEFAULTS}


def test_the_chart_passes_the_server_values() -> None:
    """The parser above finds what it checks (a template change cannot empty the list)."""
    assert {"MAX_REQUEST_BYTES", "MAX_CONNECTIONS", "SHUTDOWN_GRACE_SECONDS", "LOG_LEVEL"} <= set(
        CHECKED
    ), CHECKED
    assert set(NOT_SETTINGS_DEFAULTS) <= set(passed_settings())


@pytest.mark.parametrize(("env", "key"), sorted(CHECKED.items()))
def test_chart_value_says_what_the_setting_says(env: str, key: str) -> None:
    field = Settings.model_fields.get(env.lower())
    assert field is not None, f"configData passes {env}, which is no setting"
    default, node = lookup(VALUES, key), lookup(SCHEMA, key, schema=True)

    assert default == field.default, f"{key}: {default!r} in values.yaml, {field.default!r} in code"

    sentence = f"`{env}`: {field.description}."
    described = node.get("description", "")
    assert described == sentence or described.startswith(sentence + " "), (
        f"{key}: its `# --` comment in values.yaml must begin with: {sentence}"
    )

    bounds = {
        BOUNDS[type(m)][0]: getattr(m, BOUNDS[type(m)][1])
        for m in field.metadata
        if type(m) in BOUNDS
    }
    schema_bounds = {k: node[k] for k, _ in BOUNDS.values() if k in node}
    assert schema_bounds == bounds, f"{key}: @schema bounds {schema_bounds}, Settings {bounds}"

    if typing.get_origin(field.annotation) is typing.Literal:
        assert node.get("enum") == list(typing.get_args(field.annotation)), key
    elif field.annotation is int:
        assert node["type"] == "integer", key
    elif field.annotation is float:
        # whole seconds are allowed where the chart adds them up (terminationGracePeriodSeconds)
        assert node["type"] in ("number", "integer"), key
