"""feature_store.yaml as Feast's own tools read it, and as the project reads it, give the same stores.

Feast loads a feature_store.yaml with `feast.repo_config.load_repo_config` (its CLI, FeatureStore()
and `feast serve` all do): os.path.expandvars over the text, then RepoConfig. Each check here loads
the file Feast would be pointed at that way and compares it with the project's load_config().
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feature_repo.contract import DEFAULT_DATA_DIR, FEAST_YAML_VARIABLE
from models.settings import FEAST_STORE_VARIABLES, PROJECT_ROOT, get_settings

REPO = PROJECT_ROOT / "feature_repo"
PRODUCTION = PROJECT_ROOT / "infra/feast/feature_store.production.yaml"
SQL_REGISTRY = "postgresql+psycopg2://ctr:s3cret-registry@postgres:5432/feast"
REDIS = "redis:6379,db=1,password=s3cret-redis"


@pytest.fixture(autouse=True)
def no_store_variables(monkeypatch):
    for name in (
        *FEAST_STORE_VARIABLES,
        "CTR_DATA_DIR",
        "CTR_FEAST_YAML",
        "CTR_FEAST_REPO",
        FEAST_YAML_VARIABLE,
    ):
        monkeypatch.delenv(name, raising=False)


def _feast_loads(path: Path):
    """The configuration Feast's CLI builds from `path` in feature_repo/."""
    from feast.repo_config import load_repo_config

    return load_repo_config(REPO, path)


def _stores(config) -> dict:
    """What a configuration points at, local paths resolved as Feast resolves them (from the repo)."""

    def where(path: str) -> str:
        if "://" in path:
            return path
        return str((REPO / path).resolve()) if not Path(path).is_absolute() else str(Path(path).resolve())

    registry = config.registry.model_dump()
    online = config.online_store.model_dump()
    if registry.get("registry_type", "file") == "file":
        registry["path"] = where(registry["path"])
    if online.get("type") == "sqlite":
        online["path"] = where(online["path"])
    return {
        "project": config.project,
        "registry": registry,
        "online": online,
        "offline": config.offline_store.model_dump(),
        "entity_key_serialization_version": config.entity_key_serialization_version,
    }


def _project_loads():
    from models.features.store import load_config

    return load_config(get_settings())


def test_the_repo_file_works_as_it_stands_and_is_what_the_project_uses_by_default():
    text = (REPO / "feature_store.yaml").read_text()
    assert "$" not in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    plain = _feast_loads(REPO / "feature_store.yaml")
    assert _stores(plain) == _stores(_project_loads())
    paths = get_settings().paths
    assert paths.root == DEFAULT_DATA_DIR
    assert _stores(plain)["registry"]["path"] == str(paths.feast_registry)
    assert _stores(plain)["online"] == {
        **_stores(plain)["online"],
        "type": "sqlite",
        "path": str(paths.feast_online_db),
    }
    assert plain.registry.cache_ttl_seconds == get_settings().feast_registry_ttl_s == 10
    assert plain.offline_store.type == "duckdb"


PROFILES = {
    "another data dir": {},
    "redis": {"CTR_ONLINE_STORE": "redis", "CTR_REDIS_CONNECTION": REDIS, "CTR_FEAST_REGISTRY_TTL_S": "3"},
    "redis at its default address": {"CTR_ONLINE_STORE": "redis"},
    "a registry elsewhere": {"CTR_FEAST_REGISTRY": "s3://shop-features/registry.db"},
    "a whole online store": {"CTR_FEAST_ONLINE_STORE": '{type: redis, connection_string: "' + REDIS + '"}'},
    "production": {
        "CTR_FEAST_YAML": str(PRODUCTION),
        "CTR_FEAST_SQL_REGISTRY": SQL_REGISTRY,
        "CTR_ONLINE_STORE": "redis",
        "CTR_REDIS_CONNECTION": REDIS,
    },
    "production, chosen by Feast's variable": {
        FEAST_YAML_VARIABLE: str(PRODUCTION),
        "CTR_FEAST_SQL_REGISTRY": SQL_REGISTRY,
        "CTR_REDIS_CONNECTION": REDIS,
        "CTR_FEAST_REGISTRY_TTL_S": "30",
    },
}


@pytest.mark.parametrize("profile", PROFILES)
def test_the_written_file_gives_feast_the_project_s_stores(profile, tmp_path, monkeypatch):
    from models.features.store import write_effective_yaml

    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    for name, value in PROFILES[profile].items():
        monkeypatch.setenv(name, value)
    written = write_effective_yaml(get_settings())
    assert written == tmp_path / "feast/feature_store.yaml"
    project = _stores(_project_loads())
    assert _stores(_feast_loads(written)) == project
    if project["registry"].get("registry_type", "file") == "file" and profile != "a registry elsewhere":
        assert project["registry"]["path"] == str(tmp_path / "feast/registry.db")
    if project["online"]["type"] == "sqlite":
        assert project["online"]["path"] == str(tmp_path / "feast/online.db")
    # Secrets stay in the environment: the file refers to them, Feast fills them in when it loads it.
    text = written.read_text()
    assert "s3cret" not in text
    # The project's output for this data dir is never taken for its input: pointing Feast's
    # variable at it changes nothing.
    monkeypatch.setenv(FEAST_YAML_VARIABLE, str(written))
    if FEAST_YAML_VARIABLE not in PROFILES[profile]:
        assert _stores(_project_loads()) == project
        assert write_effective_yaml(get_settings()).read_text() == text


def test_production_file_is_read_by_feast_as_it_stands(monkeypatch):
    monkeypatch.setenv("CTR_FEAST_SQL_REGISTRY", SQL_REGISTRY)
    monkeypatch.setenv("CTR_REDIS_CONNECTION", REDIS)
    monkeypatch.setenv("CTR_FEAST_REGISTRY_TTL_S", "10")
    config = _feast_loads(PRODUCTION)
    assert config.registry.registry_type == "sql" and config.registry.path == SQL_REGISTRY
    assert config.online_store.type == "redis" and config.online_store.connection_string == REDIS
    monkeypatch.setenv("CTR_FEAST_YAML", str(PRODUCTION))
    monkeypatch.setenv("CTR_ONLINE_STORE", "redis")  # as the profile sets it: the file's store stays
    assert _stores(_project_loads()) == _stores(config)


def test_a_missing_or_bad_setting_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    from models.features.store import load_config, write_effective_yaml

    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CTR_FEAST_YAML", str(PRODUCTION))
    with pytest.raises(ValueError, match="needs CTR_FEAST_SQL_REGISTRY, which"):
        load_config(get_settings())
    with pytest.raises(ValueError, match="CTR_FEAST_SQL_REGISTRY"):
        write_effective_yaml(get_settings())
    assert not (tmp_path / "feast/feature_store.yaml").exists()
    monkeypatch.delenv("CTR_FEAST_YAML")
    for name, value in (
        ("CTR_FEAST_REGISTRY_TTL_S", "soon"),
        ("CTR_FEAST_REGISTRY_TTL_S", "-1"),
        ("CTR_FEAST_ONLINE_STORE", "redis:6379"),
        ("CTR_FEAST_ONLINE_STORE", "{type: redis"),
        ("CTR_ONLINE_STORE", "memcached"),
        ("CTR_FEAST_YAML", str(tmp_path / "nowhere.yaml")),
        (FEAST_YAML_VARIABLE, str(tmp_path / "nowhere.yaml")),
    ):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                get_settings()


def test_feast_s_variable_and_the_project_s_must_name_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_FEAST_YAML", str(PRODUCTION))
    monkeypatch.setenv(FEAST_YAML_VARIABLE, str(REPO / "feature_store.yaml"))
    with pytest.raises(
        ValueError, match=f"CTR_FEAST_YAML=.* and {FEAST_YAML_VARIABLE}=.* name different files"
    ):
        get_settings()
    monkeypatch.setenv(FEAST_YAML_VARIABLE, str(PRODUCTION))
    assert get_settings().feast_yaml == PRODUCTION


def test_the_file_of_one_data_dir_with_another_data_dir(tmp_path, monkeypatch):
    """The project follows CTR_DATA_DIR; `feast apply` refuses: Feast would read the first data dir's
    registry while the repo declares the other's files."""
    from models.features.store import load_config, write_effective_yaml

    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path / "a"))
    written = write_effective_yaml(get_settings())
    monkeypatch.setenv(FEAST_YAML_VARIABLE, str(written))
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path / "b"))
    settings = get_settings()
    assert settings.feast_yaml == REPO / "feature_store.yaml"
    assert load_config(settings).registry.path == str(tmp_path / "b/feast/registry.db")
    load = "import sys; sys.path.insert(0, '.'); import data_sources"
    done = subprocess.run([sys.executable, "-c", load], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout[-2000:]
    assert (
        f"{FEAST_YAML_VARIABLE}={written}" in done.stderr and f"CTR_DATA_DIR={tmp_path / 'a'}" in done.stderr
    )


def test_infra_yamls_refer_only_to_variables_the_profile_sets():
    """Feast fills in a feature_store.yaml's ${VARS} itself; each one must be in the profile's block."""
    import re

    example = (PROJECT_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    for path in (PRODUCTION, PROJECT_ROOT / "infra/feast/feature_store.spark.yaml"):
        body = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        used = set(re.findall(r"\$\{(\w+)\}", body))
        assert used and used <= listed, (path.name, used - listed)
        assert (
            yaml.safe_load(body)["project"]
            == yaml.safe_load((REPO / "feature_store.yaml").read_text())["project"]
        )
