"""Fixtures of the chart tier: the renderings every policy check runs over.

A rendering is the chart rendered with one set of value files; the same list feeds strict schema
validation, the Pod Security Standard and checkov: a values file added to `ci/` is covered by all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import kube, tools

ROOT = kube.ROOT
CHART = ROOT / "charts" / "ml-service"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# 53 characters: the longest release name Helm accepts.
LONG_RELEASE = "a-very-long-release-name-for-testing-name-limits-abcd"
NAMESPACE = "ml-service"


@dataclass(frozen=True)
class Rendering:
    id: str
    value_files: tuple[Path, ...] = ()
    release: str = "ml-service"
    set_values: dict = field(default_factory=dict, hash=False)

    def template_kwargs(self) -> dict:
        return {
            "release": self.release,
            "namespace": NAMESPACE,
            "value_files": list(self.value_files),
            "set_values": self.set_values,
        }


RENDERINGS = [
    Rendering("defaults"),
    *[Rendering(f"ci/{p.name}", (p,)) for p in CI_VALUES],
    Rendering("long-release-name", (CHART / "ci" / "full-values.yaml",), release=LONG_RELEASE),
]


# templates/deployment.yaml renders one of them (delivery.strategy), with the same pod template.
WORKLOADS = ("Deployment", "Rollout")


def workload(docs: list[dict]) -> dict:
    (found,) = [d for d in docs if d["kind"] in WORKLOADS]
    return found


tool = functools.partial(tools.tool, setup="setup-chart")


@pytest.fixture(scope="session")
def kube_versions() -> list[str]:
    return kube.kube_version_bounds(CHART)


_rendered: dict[tuple[str, str], str] = {}


def render(rendering: Rendering, helm: Path = kube.HELM) -> str:
    """Rendered output (cached per rendering and helm binary); a render error fails the test."""
    key = (repr(rendering), str(helm))
    if key not in _rendered:
        tool(helm)
        try:
            _rendered[key] = kube.helm_template(CHART, helm=helm, **rendering.template_kwargs())
        except kube.HelmError as err:
            pytest.fail(f"{rendering.id} does not render with {helm.name}:\n{err}")
    return _rendered[key]
