"""Certificates and kubeconfigs for a throw-away cluster, made with the `openssl` CLI (ECDSA P-256:
instant to generate, accepted by every Kubernetes component)."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

DAYS = "30"


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _key(path: Path) -> None:
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path.name, cwd=path.parent
    )


def _ca(d: Path, name: str, cn: str) -> None:
    _key(d / f"{name}.key")
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.crt", "-days", DAYS,
        "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )  # fmt: skip


def _leaf(
    d: Path, name: str, ca: str, cn: str, org: str | None, *, server: bool, sans: list[str]
) -> None:
    _key(d / f"{name}.key")
    subj = (f"/O={org}" if org else "") + f"/CN={cn}"
    _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", DAYS, "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()


@dataclass(frozen=True)
class Pki:
    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def kubeconfig(self, path: Path, server: str, user: str) -> Path:
        """A kubeconfig for `server` authenticating with the client certificate `user`."""

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": b64(self.crt("ca")),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(self.crt(user)),
                        "client-key-data": b64(self.key(user)),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path


def make_pki(d: Path, *, node_name: str, node_ip: str, service_ip: str, domain: str) -> Pki:
    """CA, front-proxy CA, service-account keys, and every serving and client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca", "mlsk-ca")
    _ca(d, "front-proxy-ca", "mlsk-front-proxy-ca")
    _key(d / "sa.key")
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    api_sans = [
        "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
        f"DNS:kubernetes.default.svc.{domain}", "IP:127.0.0.1", f"IP:{node_ip}", f"IP:{service_ip}",
    ]  # fmt: skip
    _leaf(d, "apiserver", "ca", "kube-apiserver", None, server=True, sans=api_sans)
    _leaf(
        d, "kubelet-serving", "ca", node_name, None, server=True,
        sans=[f"DNS:{node_name}", f"IP:{node_ip}"],
    )  # fmt: skip
    clients = {
        "admin": ("kubernetes-admin", "system:masters"),
        "controller-manager": ("system:kube-controller-manager", None),
        "scheduler": ("system:kube-scheduler", None),
        "kubelet": (f"system:node:{node_name}", "system:nodes"),
        "kube-proxy": ("system:kube-proxy", None),
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
    }
    for name, (cn, org) in clients.items():
        _leaf(d, name, "ca", cn, org, server=False, sans=[])
    _leaf(
        d, "front-proxy-client", "front-proxy-ca", "front-proxy-client", None, server=False, sans=[]
    )
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return Pki(d)
