#!/bin/sh
# The MLflow tracking server of the production profile, behind MLflow's basic-auth app:
#   MLFLOW_AUTH_DATABASE_URI=postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow_auth \
#   MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... \
#   sh infra/mlflow/serve.sh --backend-store-uri ... --serve-artifacts ...   (mlflow server's options)
# Its auth config (users' database, default permission) is written from the environment at each
# start, so no password is ever in a committed file. Every account may read (default_permission
# READ); only an account with EDIT or MANAGE on an experiment or registered model may change it:
# the pipeline's (infra/mlflow/create_experiments.py creates the accounts and grants). The admin
# account is created on the first start with MLFLOW_AUTH_ADMIN_PASSWORD.
set -eu
: "${MLFLOW_AUTH_DATABASE_URI:?the users database of the basic-auth app, e.g. postgresql+psycopg2://...}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?the admin account password, from a secret}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?the CSRF secret of the basic-auth app, from a secret}"
config="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
umask 077
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A checked password is trusted for 60 s per worker: without it every request hashes the password
# again (PBKDF2), which made registering a model several times slower. A password changed through
# the API is forgotten at once by the worker that changed it, by the others within these 60 s.
auth_cache_ttl_seconds = 60
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth "$@"
