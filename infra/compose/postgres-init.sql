-- One PostgreSQL server, one database per use (run once, when the data volume is created).
CREATE DATABASE airflow;   -- Airflow metadata DB and the Celery result backend
CREATE DATABASE mlflow;    -- MLflow tracking and model registry (backend store)
CREATE DATABASE mlflow_auth;  -- the users and permissions of MLflow's basic-auth app
CREATE DATABASE feast;     -- Feast SQL registry (infra/feast/feature_store.production.yaml)
