"""A real single-node Kubernetes on this machine, built from source (`make setup-cluster`), for
tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet with its own
containerd (Debian's, with runc and the CNI bridge plugin), kube-proxy, and as add-ons CoreDNS,
metrics-server, the prometheus-operator with a Prometheus it manages, and the Argo Rollouts
controller (the staging and prod environments deliver by canary).

    config = ClusterConfig.create()              # free subnets, /tmp/mlsk-<name>
    with local_cluster(config, images=docker_refs, docker_env=env) as cluster:
        cluster.kubectl("get", "nodes")

Network: every component runs inside a network namespace of its own (`mlsk-<name>`), joined to
the host by one veth pair (10.245.<i>.1 host side, 10.245.<i>.2 the node). The API server, kubelet
and etcd listen there, the CNI bridge and kube-proxy's rules live there; the host only gains a
route to the pod network through the veth, so the tests reach pod IPs directly. The node's
namespace has no default route, so nothing from a pod can leave the machine, and a FORWARD rule
drops new connections from pods to anything outside the pod network as a second guard. Pods get
cluster DNS only (CoreDNS forwards nothing), the kubelet a resolv.conf of its own. Images are
imported into the node's containerd; nothing is ever pulled.

Everything is stopped by pid and cleaned (processes, mounts, cgroups, the network namespace with
its bridge and rules) on `stop()`, also after a failure, and left-overs of a crashed run in the
same work dir are cleaned before a start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import string
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from ..kube import rollouts_manifests
from ..procs import spawn, tail
from .api import Cluster, ClusterError, wait_until
from .config import ClusterConfig
from .images import ADDON_IMAGES, prometheus_operator_dir
from .pki import make_pki

MANIFESTS = Path(__file__).with_name("manifests")
ADDONS = ("dns", "metrics", "monitoring", "rollouts")
CGROUP_FS = Path("/sys/fs/cgroup")
CHILD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
# Built by `make setup-cluster` (containerd, runc and the CNI plugins are Debian's).
BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
    "kube-proxy", "kubectl",
)  # fmt: skip
# Start order; stop() goes backwards (kubelet and containerd get extra care).
COMPONENTS = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd",
    "kubelet", "kube-proxy",
)  # fmt: skip


def _run(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# Images imported (~1.3 GB), unpacked into containerd's snapshots, pod logs: with less, the
# kubelet's disk-pressure taint keeps every pod Pending.
MIN_FREE_DISK = 6 * 2**30


class LocalCluster(Cluster):
    pod_network_reachable = True

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.dir = config.work_dir
        self.log_dir = self.dir / "logs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        super().__init__(self.dir / "kubeconfig" / "admin.conf", kubectl=config.bin_dir / "kubectl")

    # ================================================================== start
    def start(
        self,
        addons: Sequence[str] = ADDONS,
        images: Sequence[str] = (),
        docker_env: dict[str, str] | None = None,
    ) -> LocalCluster:
        """Start the control plane and the node, import `images`, then the add-ons."""
        missing = [b for b in BINARIES if not (self.config.bin_dir / b).exists()]
        if missing:
            raise ClusterError(
                f"{', '.join(missing)} missing in {self.config.bin_dir}: run `make setup-cluster`"
            )
        for tool in ("containerd", "runc", "iptables", "nsenter", "openssl"):
            if not shutil.which(tool, path=CHILD_ENV["PATH"]):
                raise ClusterError(f"{tool} is not installed: run `make setup-cluster`")
        self.dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.dir).free
        if free < MIN_FREE_DISK:
            raise ClusterError(
                f"{free / 2**30:.1f} GiB free under {self.dir}; the node needs "
                f"{MIN_FREE_DISK / 2**30:.0f} GiB (imported images, containerd's snapshots, logs)"
            )
        t0 = time.monotonic()
        self.cleanup_leftovers()
        self.timings.clear()
        for sub in ("logs", "kubeconfig", "etcd", "kubelet", "containerd", "cni/net.d", "cni/ipam"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._save_state()
        c = self.config
        self.pki = make_pki(
            self.dir / "pki", node_name=c.node_name, node_ip=c.node_ip,
            service_ip=c.service_ip, domain=c.cluster_domain,
        )  # fmt: skip
        for user in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
            self.pki.kubeconfig(self.dir / "kubeconfig" / f"{user}.conf", c.api_server, user)
        self._network_up()
        self._cgroups_up()
        self._start_control_plane()
        self.timings["control plane ready"] = time.monotonic() - t0
        self._start_node()
        self.timings["node ready"] = time.monotonic() - t0
        if images:
            self.timings["image import"] = self.import_images(images, docker_env or {})
        self._start_addons(addons)
        self.timings["cluster ready"] = time.monotonic() - t0
        return self

    # ------------------------------------------------------------------ network
    def _in_netns(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.config.netns}", "--", *argv]

    def in_netns(self, *argv: str) -> list[str]:
        """`argv` run in the node's network namespace: the API server is at the node's address,
        127.0.0.1 is that namespace's own loopback and nothing leaves the machine."""
        return self._in_netns(*argv)

    def _network_up(self) -> None:
        c = self.config
        plen = c.link.prefixlen
        _run("ip", "netns", "add", c.netns)
        peer = "mlsk-node0"
        _run("ip", "link", "add", c.host_veth, "type", "veth", "peer", "name", peer,
             "netns", c.netns)  # fmt: skip
        _run("ip", "addr", "add", f"{c.host_ip}/{plen}", "dev", c.host_veth)
        _run("ip", "link", "set", c.host_veth, "up")
        ns = self._in_netns
        _run(*ns("ip", "link", "set", "lo", "up"))
        _run(*ns("ip", "addr", "add", f"{c.node_ip}/{plen}", "dev", peer))
        _run(*ns("ip", "link", "set", peer, "up"))
        # The node routes between the host link and its pod bridge; the host does not forward.
        _run(*ns("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
        _run(*ns("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"))
        # Second guard after "no default route": pods may answer, never open connections out.
        _run(*ns("iptables", "-I", "FORWARD", "-s", c.pod_cidr, "!", "-d", c.pod_cidr,
                 "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"))  # fmt: skip
        _run("ip", "route", "add", c.pod_cidr, "via", c.node_ip, "dev", c.host_veth)

    def _network_down(self) -> None:
        c = self.config
        _run("ip", "netns", "delete", c.netns, check=False)
        # The host end dies with its peer; a half-made pair may be left when setup failed early.
        _run("ip", "link", "delete", c.host_veth, check=False)

    # ------------------------------------------------------------------ cgroups
    def _cgroup_dirs(self) -> list[Path]:
        """The cgroup root of this node in every hierarchy (v1 controllers, name=systemd, and the
        v2 one of a hybrid host)."""
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] in ("cgroup", "cgroup2"):
                out.append(Path(fields[4]) / self.config.cgroup_root.lstrip("/"))
        return out

    def _cgroups_up(self) -> None:
        for d in self._cgroup_dirs():
            d.mkdir(exist_ok=True)
            # A new cpuset cgroup starts empty: it must inherit the parent's CPUs and memory nodes.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                parent = d.parent / knob
                if parent.exists():
                    (d / knob).write_text(parent.read_text())

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            if d.exists():
                for procs in d.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError, ValueError):
                        pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _cgroups_down(self) -> None:
        for d in self._cgroup_dirs():
            if not d.exists():
                continue
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        env = {**CHILD_ENV, "HOME": str(self.dir)}
        proc = spawn(self._in_netns(*argv), log_path=self.log_dir / f"{name}.log", env=env,
                     cwd=self.dir)  # fmt: skip
        self.procs[name] = proc
        self._save_state()
        return proc

    def _bin(self, name: str) -> str:
        return str(self.config.bin_dir / name)

    def _check_alive(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise ClusterError(
                f"{name} exited with {proc.returncode}:\n{tail(self.log_dir / f'{name}.log', 3000)}"
            )

    def _wait(self, what: str, predicate, timeout: float, components: Sequence[str]) -> None:
        def check():
            for name in components:
                self._check_alive(name)
            return predicate()

        wait_until(check, timeout, what, interval=0.5)

    def _start_control_plane(self) -> None:
        c, pki, d = self.config, self.pki, self.dir
        self._spawn("etcd", [
            self._bin("etcd"), "--name", "mlsk", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", "http://127.0.0.1:2379",
            "--advertise-client-urls", "http://127.0.0.1:2379",
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "mlsk=http://127.0.0.1:2380",
            # a test cluster: losing it on power failure is fine, slow fsyncs on a busy disk are not
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3), "--log-level", "warn",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            self._bin("kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--advertise-address={c.node_ip}", "--secure-port=6443",
            f"--tls-cert-file={pki.crt('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.crt('ca')}",
            f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.crt('ca')}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki.key('sa')}",
            f"--service-account-issuer=https://kubernetes.default.svc.{c.cluster_domain}",
            f"--service-cluster-ip-range={c.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # as kubeadm: the server allows privileged pods, Pod Security decides per namespace
            "--allow-privileged=true",
            # the aggregation layer, for metrics-server's metrics.k8s.io
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            "--enable-aggregator-routing=true",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._wait("kube-apiserver /readyz", self._apiserver_ready, 120, ("etcd", "kube-apiserver"))
        kc = d / "kubeconfig"
        self._spawn("kube-controller-manager", [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={kc / 'controller-manager.conf'}",
            f"--authentication-kubeconfig={kc / 'controller-manager.conf'}",
            f"--authorization-kubeconfig={kc / 'controller-manager.conf'}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            f"--service-account-private-key-file={pki.key('sa')}",
            f"--root-ca-file={pki.crt('ca')}",
            f"--cluster-signing-cert-file={pki.crt('ca')}",
            f"--cluster-signing-key-file={pki.key('ca')}",
            f"--service-cluster-ip-range={c.service_cidr}",
            "--use-service-account-credentials=true",
            "--controllers=*,-nodeipam",
            # HPA decisions every 5 s (default 15 s): the autoscaling tests wait less
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--profiling=false", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            self._bin("kube-scheduler"), f"--kubeconfig={kc / 'scheduler.conf'}",
            f"--authentication-kubeconfig={kc / 'scheduler.conf'}",
            f"--authorization-kubeconfig={kc / 'scheduler.conf'}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            "--profiling=false", "--v=1",
        ])  # fmt: skip

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.crt("ca")))
        ctx.load_cert_chain(str(self.pki.crt("admin")), str(self.pki.key("admin")))
        try:
            with urllib.request.urlopen(
                f"{self.config.api_server}/readyz", context=ctx, timeout=3
            ) as resp:
                return resp.status == 200
        except OSError:
            return False

    # ------------------------------------------------------------------ node
    def _write_node_config(self) -> None:
        c, d, pki = self.config, self.dir, self.pki
        sock = d / "containerd" / "containerd.sock"
        # containerd: own root/state/socket; nothing pulled (the sandbox image is imported);
        # network namespaces mounted under its state dir, so cleanup finds them all.
        (d / "containerd" / "config.toml").write_text(f'''version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{ADDON_IMAGES["pause"]}"
  enable_selinux = false
  disable_apparmor = true
  # root here has no CAP_SYS_RESOURCE: runc could not lower oom_score_adj to the kubelet's -998
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc", path=CHILD_ENV["PATH"])}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
''')
        cni = {
            "cniVersion": "0.4.0",
            "name": "mlsk",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": c.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    # a pod reaching its own Service IP gets its packets back
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": c.pod_cidr}]],
                        # No default route in pods: only Services and the node (API server and
                        # kubelet) are reachable beyond the pod network.
                        "routes": [{"dst": c.service_cidr}, {"dst": str(c.link)}],
                        "dataDir": str(d / "cni" / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (d / "cni" / "net.d" / "10-mlsk.conflist").write_text(json.dumps(cni, indent=2))
        # Pods of dnsPolicy Default (CoreDNS) and the kubelet's own lookups: nothing to ask.
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # this VM has cgroup v1 (the kubelet refuses it by default since 1.35)
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": c.cgroup_root,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "containerRuntimeEndpoint": f"unix://{sock}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.crt("ca"))},
            },
            "authorization": {"mode": "Webhook"},
            "address": c.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": str(pki.crt("kubelet-serving")),
            "tlsPrivateKeyFile": str(pki.key("kubelet-serving")),
            "clusterDomain": c.cluster_domain,
            "clusterDNS": [c.dns_ip],
            "resolvConf": str(d / "resolv.conf"),
            "podLogsDir": str(d / "pod-logs"),
            "failSwapOn": False,
            "staticPodPath": "",
            # imported images are the only copies: never garbage-collect them
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # The node shares the host's disk with everything else on it: absolute floors (a
            # percentage of a large shared disk is gigabytes), and a short transition period so a
            # moment of pressure (an image import elsewhere) does not taint the node for 5 min.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "500Mi",
                "imagefs.available": "500Mi",
            },
            "evictionPressureTransitionPeriod": "30s",
            "serializeImagePulls": False,
            "maxPods": 60,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
        }
        (d / "kubelet-config.yaml").write_text(yaml.safe_dump(kubelet))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(d / "kubeconfig" / "kube-proxy.conf")},
            "clusterCIDR": c.pod_cidr,
            "hostnameOverride": c.node_name,
            "bindAddress": "0.0.0.0",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0 = leave the host-wide conntrack table size alone (not per network namespace)
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        (d / "kube-proxy-config.yaml").write_text(yaml.safe_dump(proxy))

    def _start_node(self) -> None:
        c, d = self.config, self.dir
        self._write_node_config()
        self._spawn("containerd", ["containerd", "--config", str(d / "containerd" / "config.toml")])
        self._wait("containerd socket", lambda: self._ctr("version", check=False).returncode == 0,
                   60, ("containerd",))  # fmt: skip
        self._spawn("kubelet", [
            self._bin("kubelet"), f"--config={d / 'kubelet-config.yaml'}",
            f"--kubeconfig={d / 'kubeconfig' / 'kubelet.conf'}",
            f"--root-dir={d / 'kubelet'}", f"--hostname-override={c.node_name}",
            f"--node-ip={c.node_ip}", "--v=1",
        ])  # fmt: skip
        self._spawn(
            "kube-proxy", [self._bin("kube-proxy"), f"--config={d / 'kube-proxy-config.yaml'}"]
        )

        def node_ready() -> bool:
            proc = self.kubectl("get", "node", c.node_name, "-o", "json", check=False)
            if proc.returncode != 0:
                return False
            conds = json.loads(proc.stdout)["status"].get("conditions", [])
            return any(x["type"] == "Ready" and x["status"] == "True" for x in conds)

        self._wait("node Ready", node_ready, 180, COMPONENTS)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 600, **kw):
        sock = self.dir / "containerd" / "containerd.sock"
        return _run("ctr", "--address", str(sock), "--namespace", "k8s.io", *args,
                    check=check, timeout=timeout, **kw)  # fmt: skip

    def import_images(self, refs: Sequence[str], docker_env: dict[str, str]) -> float:
        """`docker save REFS | ctr images import -` into the node's containerd; seconds taken."""
        start = time.monotonic()
        save = subprocess.Popen(
            ["/usr/bin/docker", "save", *refs], stdout=subprocess.PIPE, env=docker_env
        )
        try:
            self._ctr("images", "import", "--no-unpack=false", "-", stdin=save.stdout, timeout=900)
        finally:
            save.stdout.close()
            if save.wait(timeout=300) != 0:
                raise ClusterError(f"docker save {' '.join(refs)} failed")
        listed = self._ctr("images", "list", "-q").stdout.split()
        missing = [r for r in refs if not any(name.endswith(r.split("/")[-1]) for name in listed)]
        if missing:
            raise ClusterError(f"images missing after import: {missing}")
        return time.monotonic() - start

    def tag_image(self, source: str, repository: str, tag: str) -> str:
        """Give an imported image the names a release pins, `repository:tag` and
        `repository@<digest>` (what a registry push would make resolvable), so a pod spec naming
        `repository:tag@digest` runs it without a pull; returns the digest."""
        listed = self._ctr("images", "list").stdout.splitlines()
        digest = next((line.split()[2] for line in listed[1:] if line.split()[0] == source), None)
        if digest is None:
            raise ClusterError(f"{source} is not in the node's containerd")
        for target in (f"{repository}:{tag}", f"{repository}@{digest}"):
            self._ctr("images", "tag", "--force", source, target)
        return digest

    def image_names(self) -> list[str]:
        """Every name an image has in the node's containerd."""
        return self._ctr("images", "list", "-q").stdout.split()

    def untag_image(self, ref: str) -> None:
        """Remove one name of an image (its content stays while another name or a container
        uses it): what the node holds is then only what was named for it."""
        self._ctr("images", "rm", ref)

    # ------------------------------------------------------------------ add-ons
    def _render(self, name: str, **extra: str) -> str:
        c = self.config
        values = {
            "dns_ip": c.dns_ip, "domain": c.cluster_domain, "node_ip": c.node_ip,
            **{f"image_{k.replace('-', '_')}": v for k, v in ADDON_IMAGES.items()}, **extra,
        }  # fmt: skip
        return string.Template((MANIFESTS / name).read_text()).substitute(values)

    def _start_addons(self, addons: Sequence[str]) -> None:
        t0 = time.monotonic()
        waits: list[tuple[str, str]] = []
        if "dns" in addons:
            self.apply(self._render("coredns.yaml"))
            waits.append(("kube-system", "deployment/coredns"))
        if "metrics" in addons:
            self.apply(self._render("metrics-server.yaml"))
            waits.append(("kube-system", "deployment/metrics-server"))
        if "monitoring" in addons:
            self._apply_prometheus_operator()
            waits.append(("monitoring", "deployment/prometheus-operator"))
        if "rollouts" in addons:
            self._apply_argo_rollouts()
            waits.append(("argo-rollouts", "deployment/argo-rollouts"))
        for ns, target in waits:
            self.rollout(ns, target, timeout=240)
        if "monitoring" in addons:
            version = ADDON_IMAGES["prometheus"].rsplit(":", 1)[1]
            self.apply(self._render("prometheus.yaml", prometheus_version=version))
            wait_until(
                lambda: self.exists("statefulset/prometheus-k8s", "monitoring"), 120,
                "the operator created the Prometheus StatefulSet",
                diag=lambda: self.logs("monitoring", "deployment/prometheus-operator")[-3000:],
            )  # fmt: skip
            self.rollout("monitoring", "statefulset/prometheus-k8s", timeout=240)
        if "metrics" in addons:
            wait_until(lambda: self._metrics_api_ready(), 180, "metrics.k8s.io serves node metrics",
                       interval=2)  # fmt: skip
        self.timings["add-ons ready"] = time.monotonic() - t0

    def _metrics_api_ready(self) -> bool:
        proc = self.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
        return proc.returncode == 0 and bool(json.loads(proc.stdout).get("items"))

    def _apply_prometheus_operator(self) -> None:
        """The operator's own CRDs and example RBAC/Deployment from its Go module, in `monitoring`,
        with the locally built images."""
        mod = prometheus_operator_dir()
        self.create_namespace("monitoring", restricted=False)
        crds = sorted((mod / "example" / "prometheus-operator-crd").glob("*.yaml"))
        for crd in crds:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), timeout=300)
        self.kubectl("wait", "--for=condition=established", "--timeout=120s",
                     *[f"crd/{p.name.removeprefix('monitoring.coreos.com_').removesuffix('.yaml')}"
                       ".monitoring.coreos.com" for p in crds])  # fmt: skip
        docs = []
        for f in sorted((mod / "example" / "rbac" / "prometheus-operator").glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc or doc["kind"] == "ServiceMonitor":
                    continue
                if doc["kind"] == "ClusterRoleBinding":
                    for s in doc["subjects"]:
                        s["namespace"] = "monitoring"
                else:
                    doc["metadata"]["namespace"] = "monitoring"
                if doc["kind"] == "Deployment":
                    ctr = doc["spec"]["template"]["spec"]["containers"][0]
                    ctr["image"] = ADDON_IMAGES["prometheus-operator"]
                    ctr["imagePullPolicy"] = "Never"
                    # a small node: leave CPU requests to the workloads under test
                    ctr["resources"]["requests"]["cpu"] = "20m"
                    reloader = ADDON_IMAGES["prometheus-config-reloader"]
                    ctr["args"] = [
                        f"--prometheus-config-reloader={reloader}"
                        if a.startswith("--prometheus-config-reloader=")
                        else a
                        for a in ctr["args"]
                    ]
                docs.append(doc)
        self.apply(docs)

    def _apply_argo_rollouts(self) -> None:
        """Argo Rollouts' own install manifest (CRDs, RBAC, the controller's Deployment) from its
        Go module, in `argo-rollouts`, running the locally built controller."""
        self.create_namespace("argo-rollouts", restricted=False)
        docs = []
        install = (rollouts_manifests() / "install.yaml").read_text()
        for doc in yaml.safe_load_all(install):
            if not doc:
                continue
            if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
                doc["metadata"]["namespace"] = "argo-rollouts"
            if doc["kind"] == "Deployment":
                ctr = doc["spec"]["template"]["spec"]["containers"][0]
                ctr["image"] = ADDON_IMAGES["argo-rollouts"]
                ctr["imagePullPolicy"] = "Never"
                # a small node: leave CPU requests to the workloads under test
                ctr["resources"]["requests"] = {"cpu": "20m", "memory": "64Mi"}
            docs.append(doc)
        self.apply(docs)

    # ================================================================== stop
    def stop(self, keep_logs: bool = True) -> None:
        """Stop everything this cluster started and remove its traces (safe to call twice)."""
        self._teardown(dict(self._pids_from_procs()))
        self.procs.clear()
        self._wipe(keep_logs)

    def _pids_from_procs(self) -> Iterator[tuple[str, int]]:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                yield name, proc.pid

    def _save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "index": self.config.index,
            "netns": self.config.netns,
            "pids": {n: p.pid for n, p in self.procs.items()},
        }
        (self.dir / "state.json").write_text(json.dumps(state))

    def cleanup_leftovers(self) -> None:
        """Clean what a crashed run in this work dir left behind (by its recorded pids, checked
        against their command lines so that a recycled pid is never touched)."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        pids = {}
        for name, pid in state.get("pids", {}).items():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if str(self.dir) in cmdline or str(self.config.bin_dir) in cmdline:
                    pids[name] = pid
        self._teardown(pids)
        self._wipe(keep_logs=False)

    def _teardown(self, pids: dict[str, int]) -> None:
        def kill(pid: int, sig: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

        def wait_gone(pid_list, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not [p for p in pid_list if Path(f"/proc/{p}").exists() and not _zombie(p)]:
                    return
                time.sleep(0.2)

        t0 = time.monotonic()

        def step(name: str) -> None:
            self.timings[f"stop: {name}"] = round(time.monotonic() - t0, 1)

        # 1. the kubelet first, so it restarts nothing; then every container process of the node
        #    (they all live under its cgroup root) and the runtime shims of its containerd.
        if "kubelet" in pids:
            kill(pids["kubelet"], signal.SIGKILL)
            wait_gone([pids["kubelet"]], 10)
        for _ in range(3):
            victims = self._cgroup_pids() | set(self._shim_pids())
            for pid in victims:
                kill(pid, signal.SIGKILL)
            wait_gone(victims, 10)
            if not victims:
                break
        step("containers killed")
        # 2. the other components, newest first (SIGTERM, then SIGKILL)
        rest = [pids[n] for n in reversed(COMPONENTS) if n in pids and n != "kubelet"]
        for pid in rest:
            kill(pid, signal.SIGTERM)
        wait_gone(rest, 5)  # a throw-away cluster: no need to wait for a graceful exit
        for pid in rest:
            kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        step("components stopped")
        # 3. mounts (pod volumes, container root filesystems, network namespaces), deepest first
        self._unmount_all()
        step("unmounted")
        # 4. cgroups and the network namespace (its bridge, veths and iptables rules go with it)
        self._cgroups_down()
        self._network_down()
        # 5. the kubelet's links to container logs (a fixed host path) into this work dir
        links = Path("/var/log/containers")
        if links.is_dir():
            for link in links.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                        link.unlink()
        step("done")

    def _shim_pids(self) -> list[int]:
        """containerd-shim processes started by this node's containerd (they outlive it)."""
        sock = str(self.dir / "containerd" / "containerd.sock")
        found = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
                if cmd and b"containerd-shim" in cmd[0] and sock.encode() in b" ".join(cmd):
                    found.append(int(proc_dir.name))
        return found

    def _unmount_all(self) -> None:
        prefix = str(self.dir) + "/"
        for _ in range(5):
            mounts = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix) or line.split()[4] == str(self.dir)
            ]
            if not mounts:
                return
            for m in sorted(set(mounts), key=lambda p: -p.count("/")):
                if _run("umount", m, check=False).returncode != 0:
                    _run("umount", "-l", m, check=False)

    def _wipe(self, keep_logs: bool) -> None:
        if not self.dir.exists():
            return
        for child in self.dir.iterdir():
            if keep_logs and child.name == "logs":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    # ================================================================== diagnostics
    def component_logs(self, chars: int = 2000) -> str:
        return "\n".join(
            f"--- {name} ---\n{tail(self.log_dir / f'{name}.log', chars)}" for name in self.procs
        )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def local_cluster(config: ClusterConfig | None = None, **start_kwargs) -> Iterator[LocalCluster]:
    """Start a local cluster, yield it, and always stop and clean it up."""
    cluster = LocalCluster(config or ClusterConfig.create())
    try:
        cluster.start(**start_kwargs)
        yield cluster
    finally:
        cluster.stop()
