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
