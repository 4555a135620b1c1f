"""Static checks of the deployment files under infra/: they parse, and they say what we rely on."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
ENTRYPOINT = "python -m jobs.personalize --config /config/job.yaml"
RUNTIME_IMAGE_HINT = "omnipersona/runtime:"

# Env vars whose values are credentials: they must come from a Secret, never a literal.
SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|BACKEND_STORE_URI|_KEY_ID)$")
LITERAL_SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"\b[A-Za-z0-9/+]{40}\b"),  # AWS secret access key shape
    re.compile(r"://[^/\s:@<>]+:[^/\s@<>]+@"),  # user:password@ in a URI (<placeholders> allowed)
]


def load_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in YAML_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = load_documents()


def k8s(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in DOCS if isinstance(d, dict) and d.get("kind") == kind]


def ray_cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, doc in k8s("RayJob"):
        yield f"{path.name} RayJob", doc["spec"]["rayClusterSpec"]
    for path, doc in k8s("RayCluster"):
        yield f"{path.name} RayCluster", doc["spec"]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template in the Kubernetes manifests, named by where it sits."""
    for where, cluster in ray_cluster_specs():
        yield f"{where} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster["workerGroupSpecs"]:
            yield f"{where} worker group {group['groupName']}", group["template"]["spec"]
    for path, doc in k8s("RayJob"):
        if "submitterPodTemplate" in doc["spec"]:
            yield f"{path.name} submitter", doc["spec"]["submitterPodTemplate"]["spec"]
    for path, doc in k8s("Deployment"):
        yield f"{path.name} Deployment", doc["spec"]["template"]["spec"]
    for path, doc in k8s("CronJob"):
        yield f"{path.name} CronJob", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs():
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            yield f"{where} / {container.get('name')}", container


def test_infra_has_the_expected_files():
    expected = {
        "docker/Dockerfile", "aws/cluster.yaml", "mlflow/deployment.yaml", "README.md",
        "kuberay/rayjob.yaml", "kuberay/raycluster.yaml", "kuberay/job-config.yaml", "kuberay/nightly-cronjob.yaml",
    }
    present = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file()}
    assert expected <= present


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_yaml_file_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)


def test_rayjob_runs_the_personalize_entrypoint():
    (path, rayjob), = k8s("RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["spec"]["entrypoint"] == ENTRYPOINT
    yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])  # a YAML string, as KubeRay expects
    module = REPO / "jobs" / "personalize.py"
    if not module.exists():
        pytest.skip(f"{module.relative_to(REPO)} is not written yet: cannot check the entrypoint module exists")
    assert module.is_file()


def test_job_config_is_mounted_where_the_entrypoint_reads_it():
    (_, config_map), = [(p, d) for p, d in k8s("ConfigMap") if d["metadata"]["name"] == "omnipersona-job-config"]
    job = yaml.safe_load(config_map["data"]["job.yaml"])
    assert isinstance(job, dict) and job
    for where, cluster in ray_cluster_specs():
        head = cluster["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
        assert "/config" in mounts, f"{where}: head does not mount /config"
        assert volumes[mounts["/config"]]["configMap"]["name"] == "omnipersona-job-config"


def test_every_container_has_an_image_and_resources():
    seen = 0
    for where, container in containers():
        seen += 1
        image = container.get("image", "")
        assert image and ":" in image.rsplit("/", 1)[-1], f"{where}: image must carry a tag"
        assert not image.endswith(":latest"), f"{where}: pin the image tag"
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            present = set(resources.get(section, {}))
            assert {"cpu", "memory"} <= present, f"{where}: resources.{section} needs cpu and memory"
    assert seen >= 7  # ray head, workers and submitter of both Ray manifests, mlflow, scheduler


def test_ray_pods_use_the_project_runtime_image():
    images = {c["image"] for where, c in containers() if "RayJob" in where or "RayCluster" in where}
    assert len(images) == 1 and RUNTIME_IMAGE_HINT in images.pop()


def test_gpu_on_workers_only():
    for where, cluster in ray_cluster_specs():
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
        assert all("nvidia.com/gpu" not in str(c.get("resources")) for c in head), f"{where}: head must not take a GPU"
        assert cluster["workerGroupSpecs"], f"{where}: no worker group"
        for group in cluster["workerGroupSpecs"]:
            for c in group["template"]["spec"]["containers"]:
                requests, limits = c["resources"]["requests"], c["resources"]["limits"]
                assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{where}/{group['groupName']}: no GPU limit"
                # Extended resources must have request == limit.
                assert str(requests.get("nvidia.com/gpu")) == str(limits["nvidia.com/gpu"])
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_credentials_come_from_secrets_not_literals():
    referenced = set()
    for where, container in containers():
        for env in container.get("env", []):
            if SECRET_ENV.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} is a literal; use secretKeyRef"
                ref = env["valueFrom"]["secretKeyRef"]
                referenced.add(ref["name"])
        for source in container.get("envFrom", []):
            assert "configMapRef" in source or "secretRef" in source
    assert {"omnipersona-s3", "mlflow-db"} <= referenced
    assert not k8s("Secret"), "Secrets are created out of band (see infra/README.md), never committed"
    for path in YAML_FILES + [INFRA / "docker" / "Dockerfile", INFRA / "README.md"]:
        text = path.read_text()
        for pattern in LITERAL_SECRET_PATTERNS:
            assert not pattern.search(text), f"{path}: looks like a literal credential ({pattern.pattern})"


CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def is_valid_cron(expression: str) -> bool:
    """Standard 5-field cron as Kubernetes CronJob accepts it (plus the @daily-style macros)."""
    if expression in {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}:
        return True
    fields = expression.split()
    if len(fields) != 5:
        return False

    def value(token: str, index: int) -> int | None:
        names = CRON_NAMES.get(index, [])
        if token.lower() in names:
            return names.index(token.lower()) + (1 if index == 3 else 0)
        return int(token) if token.isdigit() else None

    for index, field in enumerate(fields):
        low, high = CRON_FIELDS[index]
        for item in field.split(","):
            base, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return False
            if base in ("*", "?"):
                continue
            bounds = [value(t, index) for t in base.split("-")]
            if len(bounds) > 2 or any(b is None or not low <= b <= high for b in bounds):
                return False
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                return False
    return True


@pytest.mark.parametrize(
    ("expression", "valid"),
    [("0 2 * * *", True), ("*/15 0-6 1,15 jan-mar mon-fri", True), ("@daily", True),
     ("0 24 * * *", False), ("0 2 * *", False), ("61 * * * *", False), ("*/0 * * * *", False)],
)
def test_cron_validator(expression, valid):
    assert is_valid_cron(expression) is valid


def test_nightly_schedule_creates_rayjobs():
    (_, cron), = k8s("CronJob")
    assert is_valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "kubectl create --namespace omnipersona -f /template/rayjob.yaml" in command
    # It waits for the RayJob and fails with it, so a failed night is a failed Kubernetes Job.
    assert "FAILED" in command and "exit 1" in command and "SUCCEEDED" in command
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    # The account it runs as may create RayJobs.
    (_, role), = k8s("Role")
    assert any("rayjobs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    (_, binding), = k8s("RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    # rayjob.yaml is used as the template, so it must be creatable repeatedly.
    (_, rayjob), = k8s("RayJob")
    assert "generateName" in rayjob["metadata"]


def test_mlflow_server_uses_postgres_secret_s3_artifacts_and_workers():
    (_, deployment), = k8s("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = " ".join(container.get("command", []) + container["args"])
    assert "server" in args
    assert re.search(r"--artifacts-destination[= ]s3://", args)
    assert re.search(r"--workers[= ]\d+", args)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    (_, service), = k8s("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])


def test_aws_cluster_launcher_config():
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    ray = pytest.importorskip("ray")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    assert RUNTIME_IMAGE_HINT in config["docker"]["image"]
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    gpu_types = [n for n in node_types.values() if re.match(r"(g\d|p\d)", n["node_config"]["InstanceType"])]
    assert gpu_types, "no GPU worker node type"
    assert node_types[config["head_node_type"]]["resources"].get("CPU") == 0
    assert any("pip install" in c and "omnipersona" in c for c in config["setup_commands"])


def dockerfile_with_args_resolved() -> str:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    for name, value in defaults.items():
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    return text


def test_dockerfile_pins_torch_and_installs_the_project():
    text = dockerfile_with_args_resolved()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.replace(" ", "").startswith("torch==")]
    assert torch_pin == "torch==2.13.0"
    assert re.search(r'pip install "?torch==2\.13\.0"? --index-url https://download\.pytorch\.org/whl/cu\d+', text)
    assert re.search(r'pip install "?\.(\[[\w,-]+\])?"?', text), "the project itself is not installed"
    assert re.search(r"^FROM nvidia/cuda:\S+", text, flags=re.M)
    assert "python3.11" in text
    # torch before the project, so the CUDA build satisfies the pin.
    assert text.index("torch==2.13.0") < text.index('pip install ".')
