"""Turns the chart's rendered workloads into local processes (the chart wiring test's harness).

Each Deployment / Job pod becomes a `mtopt.up.topology.ProcessSpec` with exactly the container's
command, args and env, translated the way a cluster would resolve them, with this machine in the
cluster's place:
- a Kubernetes Service address (`dns:///mtopt-trainer:50056`, `mtopt-minio:9000`) -> the loopback
  port of the process behind that Service (the real MinIO of the test for the bundled MinIO);
- a containerPort's number in a `*PORT` variable -> a free loopback port;
- `secretKeyRef` -> the Secret's key, which must exist in the rendered chart (the bundled MinIO's
  root user/password are those of the test's MinIO);
- container paths under a volumeMount -> a tmp directory: a ConfigMap volume holds the rendered
  ConfigMap's files, an emptyDir is empty.
Nothing else is added but a clean base environment (PATH, HOME, TMPDIR, one thread per process).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from mtopt.up.topology import ProcessSpec
from mtopt.serving.ports import unused_port as free_port

SERVICE_ADDRESS = re.compile(r"^(dns:///)?([a-z0-9][a-z0-9-]*):(\d+)$")


@dataclasses.dataclass
class Pod:
    """One pod of a rendered workload, as a local process."""

    name: str
    kind: str  # Deployment or Job
    component: str
    container: dict
    pod_spec: dict
    ports: dict[str, int]  # container port name -> local port

    def probe_port(self, probe: dict) -> int:
        """Local port of a probe's port (a number or a port name)."""
        port = (probe.get("grpc") or probe.get("httpGet"))["port"]
        if isinstance(port, str):
            return self.ports[port]
        name = next(p["name"] for p in self.container["ports"] if p["containerPort"] == port)
        return self.ports[name]


@dataclasses.dataclass
class MinioEndpoint:
    endpoint: str
    access_key: str
    secret_key: str


class ChartWiring:
    """The rendered chart's workloads (not the bundled MinIO: `minio` stands in for it) as processes.

    Usage::

        wiring = ChartWiring(render(values), minio, tmp_path)
        specs = wiring.specs()            # ProcessSpecs for mtopt.up.supervisor.Supervisor
        wiring.resolve_address("dns:///mtopt-trainer:50056")   # -> "127.0.0.1:<port>"
    """

    def __init__(self, objects: list[dict], minio: MinioEndpoint, root: Path):
        self.objects, self.minio, self.root = objects, minio, root
        self.pods: list[Pod] = []
        for obj in objects:
            if obj["kind"] not in ("Deployment", "Job") or obj["metadata"]["name"].endswith("-minio"):
                continue
            replicas = obj["spec"].get("replicas", 1) if obj["kind"] == "Deployment" else 1
            pod_spec = obj["spec"]["template"]["spec"]
            assert len(pod_spec["containers"]) == 1, obj["metadata"]["name"]
            container = pod_spec["containers"][0]
            component = obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            for r in range(replicas):
                ports = {p["name"]: free_port() for p in container.get("ports", [])}
                self.pods.append(Pod(f"{obj['metadata']['name']}-{r}", obj["kind"], component, container, pod_spec, ports))
        self.services = self._service_ports()

    # ---- lookups in the rendered chart ---------------------------------------------------------
    def _objects(self, kind: str) -> dict[str, dict]:
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == kind}

    def _service_ports(self) -> dict[tuple[str, int], str]:
        """(Service name, port) -> local address of the (one) pod its selector picks."""
        out = {}
        for name, service in self._objects("Service").items():
            selector = service["spec"]["selector"]
            for port in service["spec"]["ports"]:
                if selector.get("app.kubernetes.io/component") == "minio":
                    out[(name, port["port"])] = self.minio.endpoint
                    continue
                pods = [p for p in self.pods if p.component == selector["app.kubernetes.io/component"]]
                assert len(pods) <= 1, f"Service {name} selects {len(pods)} pods: run one replica per dialled service"
                if pods:
                    target = port["targetPort"]
                    assert target in pods[0].ports, f"Service {name} targets port {target}, which {pods[0].name} lacks"
                    out[(name, port["port"])] = f"127.0.0.1:{pods[0].ports[target]}"
        return out

    def resolve_address(self, value: str) -> str:
        m = SERVICE_ADDRESS.match(value)
        assert m, value
        key = (m.group(2), int(m.group(3)))
        assert key in self.services, f"{value} names no Service port of the chart: {sorted(self.services)}"
        return self.services[key]

    def _secret_value(self, ref: dict) -> str:
        secrets = self._objects("Secret")
        assert ref["name"] in secrets, f"secretKeyRef names Secret {ref['name']}, which the chart does not render"
        secret = secrets[ref["name"]]
        keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
        assert ref["key"] in keys, f"Secret {ref['name']} has no key {ref['key']} ({sorted(keys)})"
        minio = self._objects("Deployment").get(ref["name"])  # the bundled MinIO reads the same Secret
        assert minio is not None, f"{ref['name']} is not the bundled MinIO's Secret"
        minio_env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}) for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
        by_key = {minio_env["MINIO_ROOT_USER"].get("key"): self.minio.access_key,
                  minio_env["MINIO_ROOT_PASSWORD"].get("key"): self.minio.secret_key}
        assert ref["key"] in by_key, f"Secret key {ref['key']} is not one MinIO uses for its root credentials"
        return by_key[ref["key"]]

    def _mounts(self, pod: Pod) -> dict[str, Path]:
        """mountPath -> local directory, ConfigMap files written."""
        volumes = {v["name"]: v for v in pod.pod_spec.get("volumes", [])}
        config_maps = self._objects("ConfigMap")
        out = {}
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.root / pod.name / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert name in config_maps, f"{pod.name} mounts ConfigMap {name}, which the chart does not render"
                for file, text in config_maps[name]["data"].items():
                    (local / file).write_text(text)
            else:
                assert "emptyDir" in volume, f"{pod.name}: volume {mount['name']} is neither a ConfigMap nor an emptyDir"
            out[mount["mountPath"]] = local
        return out

    # ---- the processes ---------------------------------------------------------------------------
    def env_of(self, pod: Pod) -> dict[str, str]:
        mounts = self._mounts(pod)
        port_numbers = {str(p["containerPort"]): p["name"] for p in pod.container.get("ports", [])}
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.root / pod.name),
               "TMPDIR": str(mounts.get("/tmp", self.root / pod.name)), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        for item in pod.container.get("env", []):
            name = item["name"]
            if "valueFrom" in item:
                assert "secretKeyRef" in item["valueFrom"], f"{pod.name}: {name} comes from {item['valueFrom']}"
                env[name] = self._secret_value(item["valueFrom"]["secretKeyRef"])
                continue
            value = item["value"]
            mount = next((m for m in mounts if value == m or value.startswith(m.rstrip("/") + "/")), None)
            if mount is not None:
                value = str(mounts[mount]) + value[len(mount.rstrip("/")):]
            elif name.endswith("PORT") and value in port_numbers:
                value = str(pod.ports[port_numbers[value]])
            elif SERVICE_ADDRESS.match(value) and ("ADDRESS" in name or "ENDPOINT" in name):
                value = self.resolve_address(value)
            env[name] = value
        return env

    def spec(self, pod: Pod) -> ProcessSpec:
        command = list(pod.container["command"]) + list(pod.container.get("args", []))
        assert command[0] == "python", f"{pod.name}: {command}"
        readiness = pod.container.get("readinessProbe", {})
        grpc_port = pod.probe_port(readiness) if "grpc" in readiness else None
        metrics = pod.ports.get("metrics")
        assert metrics is not None, f"{pod.name} has no metrics port"
        return ProcessSpec(pod.name, pod.component, (sys.executable, *command[1:]), self.env_of(pod), grpc_port, metrics,
                           health_service=(readiness.get("grpc") or {}).get("service") or "", exits=pod.kind == "Job")

    def specs(self) -> list[ProcessSpec]:
        return [self.spec(pod) for pod in self.pods]
