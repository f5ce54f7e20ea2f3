"""infra/ checked without a Docker engine, a cluster or Helm.

- The compose file, interpolated with the values .env.example gives, against the Compose
  Specification's JSON schema (compose-spec/compose-spec `schema/compose-spec.json`, as vendored by
  the check-jsonschema package).
- Every Kubernetes manifest against the Kubernetes API's JSON schemas, strict (unknown fields are
  errors), for the oldest and newest versions the kubernetes-validate package ships.
- The Helm values: the chart itself cannot be fetched here, so not against its values.schema.json.
  Instead its top-level keys are held to the chart parameters this file means to use, and every
  Kubernetes object inside it (tolerations, resources, volumes, env) against the Kubernetes schemas.
- What each file must say for this project: queues, probes, drivers, names that refer to each other.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from models.settings import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
COMPOSE = INFRA / "compose/docker-compose.yml"
K8S = INFRA / "k8s"
HELM_VALUES = INFRA / "helm/airflow-values.yaml"
IMAGE_ROOT = "/opt/ctr"  # where infra/docker/Dockerfile puts the repository

# Parameters of the official Airflow chart (1.21+) this project sets, from the chart's parameter
# reference. A key outside this list is either a typo or a new choice to look up there first.
CHART_TOP_LEVEL_KEYS = {
    "airflowVersion",
    "defaultAirflowRepository",
    "defaultAirflowTag",
    "images",
    "executor",
    "postgresql",
    "redis",
    "data",
    "extraEnvFrom",
    "env",
    "config",
    "workers",
}
CHART_WORKER_SET_KEYS = {"name", "queue", "replicas", "args", "nodeSelector", "tolerations", "resources"}


def _env_example() -> dict[str, str]:
    """Every NAME=value line of .env.example (commented or not): the one list of variables."""
    text = (PROJECT_ROOT / ".env.example").read_text()
    return {m[1]: m[2] for m in re.finditer(r"^#?\s*([A-Z][A-Z0-9_]+)=(\S*)", text, re.M)}


def _interpolate(value, variables: dict[str, str], used: set[str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message} and $$."""
    if isinstance(value, dict):
        return {k: _interpolate(v, variables, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, variables, used) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match["name"], match["op"] or "", match["arg"] or ""
        used.add(name)
        if name in variables and (variables[name] or ":" not in operator):
            return variables[name]
        if operator.endswith("?"):
            pytest.fail(f"compose requires {name} ({argument}), which .env.example does not give")
        return argument

    pattern = r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    return re.sub(pattern, replace, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    used: set[str] = set()
    document = _interpolate(yaml.safe_load(COMPOSE.read_text()), _env_example(), used)
    document["_variables"] = used
    return document


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    document = {k: v for k, v in compose.items() if k != "_variables"}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    # A broken file is caught: the schema is not vacuous.
    broken = {**document, "services": {"x": {"image": "a", "deploy": {"replica": 2}}}}
    assert list(validator.iter_errors(broken))


def test_compose_variables_are_listed_in_env_example(compose):
    missing = sorted(compose["_variables"] - set(_env_example()))
    assert not missing, f"variables the compose file reads but .env.example does not list: {missing}"


def test_compose_wires_the_production_profile(compose):
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis-acl",
        "redis",
        "mlflow",
        "mlflow-init",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
        "ranker",
        "prometheus",
    }
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().is_file(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert context == PROJECT_ROOT and (context / service["build"]["dockerfile"]).is_file()

    airflow = services["airflow-scheduler"]["environment"]
    assert airflow["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert airflow["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    broker = airflow["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://ctr-celery:") and broker.rsplit("@", 1)[1].startswith("redis:6379/")
    assert airflow["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    assert airflow["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert airflow["CTR_ONLINE_STORE"] == "redis" and airflow["CTR_REDIS_CONNECTION"].startswith("redis:6379")
    assert airflow["CTR_FEAST_SQL_REGISTRY"].startswith("postgresql+psycopg2://")
    for path in (airflow["CTR_FEAST_YAML"], airflow["AIRFLOW__CORE__DAGS_FOLDER"]):
        assert (PROJECT_ROOT / Path(path).relative_to(IMAGE_ROOT)).exists(), path

    # The training tasks' queue has a worker with a GPU; the default queue has one too.
    queues = set(re.findall(r'queue="(\w+)"', (PROJECT_ROOT / "dags/ctr_training.py").read_text()))
    assert queues == {"gpu"}
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    worker = services["airflow-worker"]["command"]
    assert worker[worker.index("--queues") + 1] == airflow["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]

    mlflow = services["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    assert "mlflow:5000" in mlflow[mlflow.index("--allowed-hosts") + 1].split(",")

    ranker = services["ranker"]
    assert ranker["deploy"]["replicas"] >= 2
    assert "/readyz" in " ".join(ranker["healthcheck"]["test"])
    assert ranker["command"][:2] == ["ctr", "serve"]


def test_prometheus_scrapes_every_ranker_replica():
    config = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ranker"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["names"] == ["ranker"] and job["dns_sd_configs"][0]["port"] == 3000


def test_dockerfile_installs_the_lock_with_the_makefiles_uv():
    dockerfile = (INFRA / "docker/Dockerfile").read_text()
    uv = re.search(r"^UV_VERSION := (\S+)", (PROJECT_ROOT / "Makefile").read_text(), re.M)[1]
    assert f"ARG UV_VERSION={uv}" in dockerfile
    assert "uv pip install --system --compile-bytecode -r requirements.lock" in dockerfile
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (PROJECT_ROOT / source).exists(), source


def test_the_lock_has_what_the_production_profile_runs():
    """The image installs requirements.lock: the Celery executor, its Redis transport, and the
    PostgreSQL drivers (psycopg2 for the URLs here, asyncpg for Airflow's async engine)."""
    pinned = set(re.findall(r"^([a-z0-9_.-]+)==", (PROJECT_ROOT / "requirements.lock").read_text(), re.M))
    assert {
        "apache-airflow-providers-celery",
        "celery",
        "kombu",
        "redis",
        "psycopg2-binary",
        "asyncpg",
    } <= pinned


# --- Kubernetes ---------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files  # nothing left out of `kubectl apply -k`
    return [(name, doc) for name in files for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _k8s_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    versions = all_versions()
    return [versions[0], versions[-1]]


@pytest.mark.parametrize("version", _k8s_versions())
def test_kubernetes_manifests_follow_the_api_schemas(version):
    import kubernetes_validate

    documents = _k8s_documents()
    assert {doc["kind"] for _, doc in documents} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "Namespace",
        "NetworkPolicy",
    }
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {error}")
    # Strict really is strict: a misspelt field fails.
    deployment = next(doc for _, doc in documents if doc["kind"] == "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {**deployment, "spec": {**deployment["spec"], "replica": 2}}, version, True
        )


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in _k8s_documents() if doc["kind"] == kind}


def test_the_ranker_is_probed_scaled_and_configured():
    (container,) = _by_kind("Deployment")["ranker"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["command"][:2] == ["ctr", "serve"]
    assert {"ctr-env"} == {s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s}
    hpa = _by_kind("HorizontalPodAutoscaler")["ranker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ranker"}
    assert hpa["spec"]["minReplicas"] >= 2
    labels = _by_kind("Deployment")["ranker"]["spec"]["template"]["metadata"]["labels"]
    assert _by_kind("Service")["ranker"]["spec"]["selector"].items() <= labels.items()

    redis = _by_kind("StatefulSet")["ctr-redis"]
    assert _by_kind("Service")[redis["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    config = _by_kind("ConfigMap")["ctr-env"]["data"]
    # The Redis connection strings hold passwords: only in Secrets, whose documented values name
    # the Redis Service.
    assert "CTR_REDIS_CONNECTION" not in config
    documented = re.findall(r"CTR_REDIS_CONNECTION='([^':]+):", (K8S / "config.yaml").read_text())
    assert documented and set(documented) <= set(_by_kind("Service"))
    assert config["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and "mlflow" in _by_kind("Service")
    assert (PROJECT_ROOT / Path(config["CTR_FEAST_YAML"]).relative_to(IMAGE_ROOT)).is_file()
    unlisted = sorted(set(config) - set(_env_example()))
    assert not unlisted, f"ConfigMap keys .env.example does not list: {unlisted}"
    assert _by_kind("PersistentVolumeClaim")["ctr-data"]["spec"]["accessModes"] == ["ReadWriteMany"]


# --- Helm values for the Airflow chart ------------------------------------------------------------


def _k8s_object_validator(definition: str) -> jsonschema.Validator:
    """A validator for one Kubernetes definition (e.g. `toleration-v1`), strict, newest version."""
    from kubernetes_validate.utils import latest_version, schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{latest_version()}-local-strict"
    schema = schema_contents(f"{folder}/{definition}.json", latest_version())
    definitions = schema_contents(f"{folder}/_definitions.json", latest_version())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _valid(definition: str, objects: list, where: str) -> None:
    validator = _k8s_object_validator(definition)
    for item in objects:
        errors = list(validator.iter_errors(item))
        assert not errors, f"{where}: {errors[0].message}"


# What the Celery profile's integration test (tests/integration/test_celery_workers.py) runs and
# the deployments must run too: besides the broker's and databases' addresses, which differ by host.
CELERY_PROFILE_KEYS = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)


def test_compose_runs_the_workers_the_celery_profile_runs(compose):
    from models.ops.celery_workers import DEFAULT_WORKER, GPU_WORKER
    from models.settings import CELERY_EXECUTOR, airflow_environment, get_settings

    services = compose["services"]
    airflow = services["airflow-scheduler"]["environment"]
    profile = airflow_environment(
        get_settings(),
        {
            "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        },
    )
    for key in CELERY_PROFILE_KEYS:
        assert airflow[key] == profile[key], key
    # The broker is Redis database 0, as the profile's default.
    assert (
        airflow["AIRFLOW__CELERY__BROKER_URL"].rsplit("/", 1)[1]
        == profile["AIRFLOW__CELERY__BROKER_URL"].rsplit("/", 1)[1]
    )
    # Each worker: the same command (less the one-machine flags, --celery-hostname and
    # --skip-serve-logs: a container has a host name and a log server of its own) and device.
    for name, worker in (("airflow-worker", DEFAULT_WORKER), ("airflow-worker-gpu", GPU_WORKER)):
        service = services[name]
        assert service["command"] == ["ctr", "airflow", *worker.airflow_args()], name
        assert service["environment"]["CTR_DEVICE"] == worker.device, name
        assert "CTR_WORKER_NAME" not in service["environment"], name


def test_helm_runs_the_gpu_worker_the_celery_profile_runs():
    from models.ops.celery_workers import DEFAULT_WORKER, GPU_WORKER
    from models.settings import airflow_environment, get_settings

    values = yaml.safe_load(HELM_VALUES.read_text())
    celery = values["workers"]["celery"]
    profile = airflow_environment(get_settings(), {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    assert values["config"]["operators"]["default_queue"] == profile["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert (
        str(values["config"]["celery"]["worker_concurrency"])
        == profile["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    )
    assert celery["queue"] == DEFAULT_WORKER.queue
    (gpu,) = [s for s in celery["sets"] if s["queue"] == GPU_WORKER.queue]
    assert gpu["args"][:2] == ["bash", "-c"]
    command = f"exec env CTR_DEVICE={GPU_WORKER.device} airflow {' '.join(GPU_WORKER.airflow_args())}"
    assert gpu["args"][2] == command


def test_helm_values_use_known_chart_keys_and_valid_kubernetes_objects():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert set(values) <= CHART_TOP_LEVEL_KEYS, set(values) - CHART_TOP_LEVEL_KEYS
    assert values["executor"] == "CeleryExecutor"
    assert values["postgresql"] == {"enabled": False} and values["redis"] == {"enabled": False}
    assert set(values["data"]) == {"metadataSecretName", "resultBackendSecretName", "brokerUrlSecretName"}
    assert values["config"]["core"]["dags_folder"] == f"{IMAGE_ROOT}/dags"

    celery = values["workers"]["celery"]
    assert celery["queue"] == values["config"]["operators"]["default_queue"]
    queues = set(re.findall(r'queue="(\w+)"', (PROJECT_ROOT / "dags/ctr_training.py").read_text()))
    sets = {s["queue"]: s for s in celery["sets"]}
    assert queues <= set(sets), "a queue of the DAGs has no worker set"
    gpu = sets["gpu"]
    assert set(gpu) <= CHART_WORKER_SET_KEYS, set(gpu) - CHART_WORKER_SET_KEYS
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"]) and gpu["nodeSelector"]
    assert "--queues gpu" in gpu["args"][-1]

    env_from = yaml.safe_load(values["extraEnvFrom"])  # the chart takes this one as a YAML string
    _valid("envfromsource-v1", env_from, "extraEnvFrom")
    _valid("envvar-v1", values["env"], "env")
    for where, body in (("workers.celery", celery), ("workers.celery.sets[gpu]", gpu)):
        _valid("resourcerequirements-v1", [body["resources"]], f"{where}.resources")
    _valid("toleration-v1", gpu["tolerations"], "gpu tolerations")
    _valid("volume-v1", celery["extraVolumes"], "workers.celery.extraVolumes")
    _valid("volumemount-v1", celery["extraVolumeMounts"], "workers.celery.extraVolumeMounts")
    assert all(isinstance(v, str) for v in gpu["nodeSelector"].values())
    with pytest.raises(AssertionError):  # the object checks reject a wrong one
        _valid("toleration-v1", [{"key": "nvidia.com/gpu", "operator": "Exists", "effects": "x"}], "probe")

    # The names it refers to are the ones infra/k8s creates.
    assert {s["configMapRef"]["name"] for s in env_from if "configMapRef" in s} <= set(_by_kind("ConfigMap"))
    claims = {v["persistentVolumeClaim"]["claimName"] for v in celery["extraVolumes"]}
    assert claims <= set(_by_kind("PersistentVolumeClaim"))
    mounts = {m["mountPath"] for m in celery["extraVolumeMounts"]}
    assert _by_kind("ConfigMap")["ctr-env"]["data"]["CTR_DATA_DIR"] in mounts


# --- Feast --------------------------------------------------------------------------------------


def test_production_feature_store_yaml_is_a_valid_feast_config(monkeypatch, tmp_path):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CTR_FEAST_YAML", str(INFRA / "feast/feature_store.production.yaml"))
    monkeypatch.setenv("CTR_FEAST_SQL_REGISTRY", "postgresql+psycopg2://ctr@postgres:5432/feast")
    monkeypatch.setenv("CTR_ONLINE_STORE", "redis")
    monkeypatch.setenv("CTR_REDIS_CONNECTION", "redis:6379,db=1")
    from models.features.store import load_config
    from models.settings import get_settings

    config = load_config(get_settings())
    assert config.registry.registry_type == "sql" and config.registry.path.startswith("postgresql+psycopg2")
    assert config.online_store.type == "redis" and config.online_store.connection_string == "redis:6379,db=1"
    assert config.offline_store.type == "duckdb"
    embedded = yaml.safe_load((PROJECT_ROOT / "feature_repo/feature_store.yaml").read_text())
    assert config.project == embedded["project"]


def test_spark_feature_store_yaml_is_documented_as_paper_only():
    """Feast's Spark store needs pyspark (not installed) and SparkSources: only its shape is checked."""
    text = (INFRA / "feast/feature_store.spark.yaml").read_text()
    spark = yaml.safe_load(text)
    assert spark["offline_store"]["type"] == "spark" and "SparkSource" in text and "ON PAPER" in text
    assert (
        spark["registry"]
        == yaml.safe_load((INFRA / "feast/feature_store.production.yaml").read_text())["registry"]
    )
    assert "CTR_SPARK_MASTER" in _env_example()


# --- Who may connect, with which credentials --------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|STORE_URI$|DATABASE_URI$|CONNECTION$|BROKER_URL$")


def _pod_specs() -> dict[str, dict]:
    """Every pod template of infra/k8s, by its workload's name."""
    specs = {}
    for _, doc in _k8s_documents():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]
    return specs


def _containers(template: dict) -> list[dict]:
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policies_let_only_the_named_clients_reach_redis_and_mlflow():
    policies = _by_kind("NetworkPolicy")
    pods = {name: spec["metadata"]["labels"] for name, spec in _pod_specs().items()}
    # What the Airflow chart labels its pods with (templates/_helpers.yaml: tier, component).
    airflow = {
        component: {"tier": "airflow", "component": component, "release": "airflow"}
        for component in ("worker", "scheduler", "api-server", "dag-processor", "triggerer")
    }
    ingest = {"app.kubernetes.io/name": "ingest"}
    clients = {**pods, **{f"airflow-{c}": labels for c, labels in airflow.items()}, "ingest": ingest}
    expected = {
        "ctr-redis": ({"ranker", "ingest", "airflow-worker", "airflow-scheduler"}, "redis", 6379),
        "mlflow": ({"ranker", "airflow-worker", "mlflow-create-experiments"}, "http", 5000),
    }
    for server, (allowed, port_name, port) in expected.items():
        (policy,) = [p for p in policies.values() if _selects(p["spec"]["podSelector"], pods[server])]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        admitted = {
            name
            for name, labels in clients.items()
            if any(_selects(source["podSelector"], labels) for source in rule["from"])
        }
        assert admitted == allowed, f"{server}: admits {sorted(admitted)}, expected {sorted(allowed)}"
        (container,) = _pod_specs()[server]["spec"]["containers"]
        (declared,) = [p for p in container["ports"] if p["name"] == port_name]
        assert (
            rule["ports"] == [{"protocol": "TCP", "port": declared["containerPort"]}]
            and port == declared["containerPort"]
        )
        # The policy selects the server's pods only.
        assert [name for name, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)] == [
            server
        ]


def _documented_secrets() -> set[str]:
    text = (K8S / "config.yaml").read_text() + HELM_VALUES.read_text()
    return set(re.findall(r"create secret generic ([\w-]+)", text)) | set(
        re.findall(r"^#\s+(ctr-airflow-[\w-]+)\s", text, re.M)
    )


def test_secrets_are_referenced_never_inlined():
    documented = _documented_secrets()
    assert {
        "ctr-secrets",
        "ctr-redis-users",
        "ctr-ranker-credentials",
        "ctr-pipeline-credentials",
    } <= documented
    referenced: dict[str, set[str]] = {}
    for workload, template in _pod_specs().items():
        for container in _containers(template):
            names = referenced.setdefault(workload, set())
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    names.add(source["secretRef"]["name"])
            for variable in container.get("env", []):
                if "valueFrom" in variable and "secretKeyRef" in variable["valueFrom"]:
                    names.add(variable["valueFrom"]["secretKeyRef"]["name"])
                elif SECRET_NAME.search(variable["name"]):
                    pytest.fail(
                        f"{workload}/{container['name']}: {variable['name']} is inlined, not a secretKeyRef"
                    )
    for workload, names in referenced.items():
        assert names <= documented, f"{workload} uses Secrets nobody is told to create: {names - documented}"
    config = _by_kind("ConfigMap")["ctr-env"]["data"]
    assert not [k for k in config if SECRET_NAME.search(k)], "a secret in the ConfigMap"
    assert not [v for v in config.values() if "password=" in v or re.search(r"//[^/@]+:[^/@]+@", v)]
    # Each gets its own credentials: the ranker read-only ones, the pipeline (Airflow) its own.
    assert (
        "ctr-ranker-credentials" in referenced["ranker"]
        and "ctr-pipeline-credentials" not in referenced["ranker"]
    )
    assert referenced["ctr-redis"] == {"ctr-redis-users"}
    assert "ctr-redis-users" not in referenced["ranker"] | referenced["mlflow"]
    values = yaml.safe_load(HELM_VALUES.read_text())
    env_from = {s["secretRef"]["name"] for s in yaml.safe_load(values["extraEnvFrom"]) if "secretRef" in s}
    assert "ctr-pipeline-credentials" in env_from and "ctr-ranker-credentials" not in env_from
    assert not [v["name"] for v in values["env"] if SECRET_NAME.search(v["name"])]


def test_compose_gives_each_role_its_own_credentials_from_the_env_file(compose):
    raw = yaml.safe_load(COMPOSE.read_text())
    services, ranker = compose["services"], compose["services"]["ranker"]["environment"]
    airflow = compose["services"]["airflow-worker"]["environment"]
    assert "username=ctr-ranker," in ranker["CTR_REDIS_CONNECTION"]
    assert ranker["MLFLOW_TRACKING_USERNAME"] == "ctr-ranker"
    assert "username=ctr-features," in airflow["CTR_REDIS_CONNECTION"]
    assert airflow["MLFLOW_TRACKING_USERNAME"] == "ctr-pipeline"
    assert ranker["CTR_PROMOTION_KEY"] == airflow["CTR_PROMOTION_KEY"]
    assert (
        "--aclfile" in services["redis"]["command"]
        and "ctr-admin" in services["redis"]["healthcheck"]["test"][1]
    )
    assert services["redis-acl"]["command"][1] == "/opt/ctr/infra/redis/acl.py"
    assert services["mlflow"]["command"][:2] == ["sh", "/opt/ctr/infra/mlflow/serve.sh"]
    for path in ("infra/redis/acl.py", "infra/mlflow/serve.sh"):
        assert (PROJECT_ROOT / path).is_file()
    # Every secret in the file is the env file's, required: ${NAME:?...}, never a written value.
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items() if isinstance(environment, dict) else []:
            if SECRET_NAME.search(key) and key != "MLFLOW_TRACKING_URI" and isinstance(value, str):
                assert "${" in value and ":?" in value, f"{name}: {key} is not taken from the env file"


def test_redis_users_give_the_ranker_reads_only():
    import runpy

    acl = runpy.run_path(str(INFRA / "redis/acl.py"))
    passwords = {variable: f"pw-{variable.lower()}-0123456789" for variable, _ in acl["USERS"].values()}
    lines = acl["render"](passwords).splitlines()
    assert lines[0].startswith("user default off")
    users = {line.split()[1]: line for line in lines}
    assert set(users) == {"default", "ctr-admin", "ctr-ranker", "ctr-features", "ctr-celery"}
    assert "+@write" not in users["ctr-ranker"] and "+@read" in users["ctr-ranker"]
    assert all("-@dangerous" in users[u] for u in ("ctr-ranker", "ctr-features", "ctr-celery"))
    with pytest.raises(ValueError, match="CTR_REDIS_RANKER_PASSWORD"):
        acl["render"]({**passwords, "CTR_REDIS_RANKER_PASSWORD": "short"})
    with pytest.raises(ValueError, match="without spaces, commas"):
        acl["render"]({**passwords, "CTR_REDIS_RANKER_PASSWORD": "a,password=injected-0123"})
