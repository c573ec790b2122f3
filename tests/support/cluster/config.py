"""Where a local cluster lives and which addresses it uses; two instances with different names
(and so different subnets, network namespace, cgroup root and work dir) coexist on one machine."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ROOT / ".tools"
# Built by `make setup-cluster` (mk/cluster.mk).
DEFAULT_BIN_DIR = TOOLS / "cluster" / "bin"
# Pod networks are 10.244.<index>.0/24, the host<->node links 10.245.<index>.0/30.
MAX_INDEX = 250


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that differs between two cluster instances.

    name           short id; network namespace `mlsk-<name>`, cgroup root `/mlsk-<name>`
    work_dir       state, logs, PKI, containerd and kubelet data (holds unix sockets: keep it short)
    index          picks the subnets below (free ones are found by `ClusterConfig.create`)
    pod_cidr       the node's pod network (a CNI bridge inside the node's network namespace)
    service_cidr   ClusterIPs (routed only inside the node's namespace: instances may share it)
    """

    name: str
    work_dir: Path
    index: int
    bin_dir: Path = DEFAULT_BIN_DIR
    service_cidr: str = "10.96.0.0/16"
    cluster_domain: str = "cluster.local"
    bridge: str = "mlsk0"
    node_name: str = "mlsk-node"

    @property
    def netns(self) -> str:
        return f"mlsk-{self.name}"

    @property
    def host_veth(self) -> str:
        return f"mlsk{self.name}"[:15]

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def link(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.245.{self.index}.0/30")

    @property
    def host_ip(self) -> str:
        return str(self.link.network_address + 1)

    @property
    def node_ip(self) -> str:
        """The node's address: the API server, kubelet and etcd client port listen here."""
        return str(self.link.network_address + 2)

    @property
    def service_ip(self) -> str:
        """ClusterIP of the `kubernetes` Service."""
        return str(ipaddress.IPv4Network(self.service_cidr).network_address + 1)

    @property
    def dns_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr).network_address + 10)

    @property
    def cgroup_root(self) -> str:
        return f"/mlsk-{self.name}"

    @property
    def api_server(self) -> str:
        return f"https://{self.node_ip}:6443"

    @classmethod
    def create(
        cls, name: str | None = None, work_dir: Path | None = None, **kwargs
    ) -> ClusterConfig:
        """A config whose subnets are free on this machine right now.

        name defaults to a hash of the work dir; work_dir to /tmp/mlsk-<name> (short: unix socket
        paths are limited to 108 bytes). Env: ML_SERVICE_CLUSTER_DIR, ML_SERVICE_CLUSTER_BIN.
        """
        work_dir = Path(work_dir or os.environ.get("ML_SERVICE_CLUSTER_DIR") or "")
        if not name:
            seed = str(work_dir) if str(work_dir) not in ("", ".") else str(ROOT)
            name = hashlib.sha256(seed.encode()).hexdigest()[:6]
        if str(work_dir) in ("", "."):
            work_dir = Path(f"/tmp/mlsk-{name}")
        if "bin_dir" not in kwargs and os.environ.get("ML_SERVICE_CLUSTER_BIN"):
            kwargs["bin_dir"] = Path(os.environ["ML_SERVICE_CLUSTER_BIN"])
        index = kwargs.pop("index", None)
        if index is None:
            index = _previous_index(work_dir) or _free_index()
        return cls(name=name, work_dir=work_dir, index=index, **kwargs)


def _previous_index(work_dir: Path) -> int | None:
    """Reuse the subnets of a previous run in the same work dir (its leftovers get cleaned)."""
    try:
        return int(json.loads((work_dir / "state.json").read_text())["index"])
    except (OSError, ValueError, KeyError):
        return None


def _free_index() -> int:
    """The first index whose subnets no route on this host uses."""
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    used = []
    for line in out.splitlines():
        dest = line.split()[0] if line.split() else ""
        try:
            used.append(ipaddress.IPv4Network(dest, strict=False))
        except ValueError:
            continue
    for index in range(1, MAX_INDEX):
        mine = [
            ipaddress.IPv4Network(f"10.244.{index}.0/24"),
            ipaddress.IPv4Network(f"10.245.{index}.0/30"),
        ]
        if not any(a.overlaps(b) for a in mine for b in used):
            return index
    raise RuntimeError("no free 10.244.x.0/24 + 10.245.x.0/30 pair on this host")
