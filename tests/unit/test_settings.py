from pathlib import Path

import pytest

from models.settings import airflow_environment, get_settings


def test_timestamps_need_an_offset(monkeypatch):
    monkeypatch.setenv("CTR_WINDOW_START", "2017-11-25T00:00:00")
    with pytest.raises(ValueError, match="CTR_WINDOW_START.*UTC offset"):
        get_settings()


def test_windows_must_be_ordered(monkeypatch):
    monkeypatch.setenv("CTR_TEST_START", "2017-11-20T00:00:00+08:00")
    with pytest.raises(ValueError, match="CTR_TEST_START"):
        get_settings()


def test_airflow_environment_keeps_what_the_user_set(tmp_path):
    env = airflow_environment(
        get_settings(), {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW_HOME": str(tmp_path)}
    )
    assert env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("dags")
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"


def test_env_example_lists_every_variable_the_settings_read():
    import re

    from models.settings import PROJECT_ROOT

    source = (PROJECT_ROOT / "models/settings.py").read_text()
    read = set(re.findall(r'_(?:env|timestamp)\("([A-Z0-9_]+)"', source))
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M))
    assert len(read) > 40
    assert read - listed == set(), "variables the settings read but .env.example does not list"


def test_a_feast_registry_url_is_kept_as_it_is(monkeypatch):
    monkeypatch.setenv("CTR_FEAST_REGISTRY", "s3://shop-features/registry.db")
    assert get_settings().feast_variables()["CTR_FEAST_REGISTRY"] == "s3://shop-features/registry.db"


def test_every_path_comes_from_the_data_dir_and_the_older_names_read_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    moved = ("CTR_SERVING_LOG", "CTR_CANDIDATES_DIR", "CTR_EVENT_LOG", "CTR_MLFLOW_ARTIFACTS", "AIRFLOW_HOME")
    stores = ("MLFLOW_TRACKING_URI", "CTR_FEAST_REGISTRY", "CTR_FEAST_ONLINE_STORE", "CTR_ONLINE_STORE")
    for name in (*moved, *stores):
        monkeypatch.delenv(name, raising=False)
    settings = get_settings()
    paths = settings.paths
    assert paths.root == settings.data_dir == tmp_path.resolve()
    assert (settings.lake_dir, settings.quarantine_dir) == (paths.lake, paths.quarantine)
    assert settings.gx_dir == paths.gx and paths.data_docs.is_relative_to(paths.gx)
    assert (settings.datasets_dir, settings.models_dir) == (paths.datasets, paths.models)
    assert paths.training_set == tmp_path / "datasets/training_set.parquet"
    assert paths.trained_model_dir("xgboost") == tmp_path / "models/candidates/xgboost"
    assert paths.evaluation == tmp_path / "models/candidates/evaluation.json"
    assert settings.candidates_dir == paths.candidates == tmp_path / "candidates"
    assert settings.serving_log_dir == paths.serving_log == tmp_path / "serving_log"
    assert settings.event_log_dir == paths.event_log == tmp_path / "events"
    assert paths.pending_events == tmp_path / "events/pending"
    assert settings.mlflow_artifact_root == paths.mlflow_artifacts == tmp_path / "mlflow/artifacts"
    assert settings.airflow_home == paths.airflow == tmp_path / "airflow"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert settings.feast_registry == str(paths.feast_registry) == str(tmp_path / "feast/registry.db")
    assert str(paths.feast_online_db) in settings.feast_online_store
    elsewhere = (
        paths.offline,
        paths.bentoml,
        paths.deployments_log,
        paths.alerts,
        paths.service_home("ranker"),
    )
    for path in (*elsewhere, paths.smoke_test_dir("ctr_ranker:1")):
        assert path.is_relative_to(tmp_path)


def test_a_folder_moved_by_its_own_variable_moves_in_paths_too(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CTR_SERVING_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("CTR_EVENT_LOG", str(tmp_path / "events"))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    settings = get_settings()
    assert settings.serving_log_dir == settings.paths.serving_log == tmp_path / "log"
    assert settings.paths.pending_events == tmp_path / "events/pending"
    assert settings.airflow_home == tmp_path / "airflow"
    assert settings.paths.lake == tmp_path / "data/lake"


def test_the_feature_repo_reads_the_data_dir_as_the_settings_do(tmp_path, monkeypatch):
    from feature_repo.contract import DATA_DIR_VARIABLE, data_dir

    monkeypatch.setenv(DATA_DIR_VARIABLE, f"  {tmp_path}  ")
    assert data_dir() == get_settings().data_dir == tmp_path.resolve()
    monkeypatch.setenv(DATA_DIR_VARIABLE, " ")
    assert data_dir() == get_settings().data_dir == (Path(__file__).resolve().parents[2] / "var")


def test_the_engine_and_spark_settings_come_from_the_environment(monkeypatch):
    from models.spark import spark_conf

    monkeypatch.setenv("CTR_ENGINE", "Spark")
    monkeypatch.setenv("CTR_SPARK_MASTER", "spark://batch:7077")
    monkeypatch.setenv("CTR_SPARK_CONF", "spark.executor.memory=4g  spark.sql.shuffle.partitions=64")
    settings = get_settings()
    assert (settings.engine, settings.spark_master) == ("spark", "spark://batch:7077")
    conf = spark_conf(settings)
    assert conf["spark.executor.memory"] == "4g" and conf["spark.sql.shuffle.partitions"] == "64"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert "spark.ui.enabled" not in conf  # the one-machine defaults stay off a cluster
    monkeypatch.setenv("CTR_SPARK_MASTER", "local[3]")
    assert spark_conf(get_settings())["spark.ui.enabled"] == "false"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CTR_ENGINE", "flink", "CTR_ENGINE='flink': expected local or spark"),
        ("CTR_SPARK_CONF", "executor.memory=4g", "not a Spark setting"),
        ("CTR_SPARK_CONF", "spark.executor.memory", "not a Spark setting"),
    ],
)
def test_a_wrong_engine_setting_is_named(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        get_settings()
