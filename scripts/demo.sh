#!/usr/bin/env bash
# The main job: the feature and training DAGs with Airflow on the Taobao events, the champion served,
# then the deployment DAG against the running service.
# DEMO_PORT (default 3000) picks the port; DEMO_KEEP_SERVING=0 stops the server after the example request.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
port="${DEMO_PORT:-3000}"

echo "== Airflow metadata DB (SQLite under var/airflow)"
mkdir -p var
ctr airflow db migrate > var/airflow-migrate.log 2>&1 || { cat var/airflow-migrate.log; exit 1; }

# One DAG run through `airflow dags test`, its log under var/; stops the demo if it does not succeed.
run_dag() {
  local dag=$1; shift
  local log="var/demo-$dag.log" started
  started=$(date +%s)
  echo "== airflow dags test $dag $* (log: $log)"
  ctr airflow dags test "$dag" "$@" > "$log" 2>&1 || { tail -50 "$log"; exit 1; }
  grep -q "state=success" "$log" || { tail -50 "$log"; echo "$dag did not succeed"; exit 1; }
  echo "   succeeded in $(( $(date +%s) - started )) s"
}

# The daily feature DAG over the whole Taobao window (9 days) in one run, then training.
run_dag ctr_features 2017-12-04T00:00:00+08:00 -c '{"days": 9}'
python - <<'PY'
from models.pipeline import validation_totals
from models.settings import get_settings
t = validation_totals(get_settings())
print(f"   validation: {t['input_rows']} rows in {t['days']} daily batches, {t['accepted_rows']} accepted, "
      f"{t['quarantined_rows']} quarantined (var/quarantine/date=*/); Data Docs: var/gx/uncommitted/data_docs/")
PY
run_dag ctr_training
python - <<'PY'
import json
from pathlib import Path
evaluation = json.loads(Path("var/models/candidates/evaluation.json").read_text())
print("   test window (later days):")
for name, m in evaluation.items():
    print(f"     {name:<20} AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}  NDCG@10 {m['ndcg_at_10']:.4f}")
PY

echo "== bentoml serve services.ranker:Ranker on 127.0.0.1:$port (log: var/demo-serve.log)"
ctr serve --port "$port" > var/demo-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
  kill -0 $server 2>/dev/null || { tail -30 var/demo-serve.log; exit 1; }
  sleep 1
done

body=$(python - <<'PY'
import json
import pandas as pd
from models.data.lake import read_events
from models.settings import get_settings
events = read_events(get_settings())
user = int(events["user_id"].value_counts().index[0])
items = events.loc[events["behavior"] == "pv", "item_id"].drop_duplicates().tail(10).astype(int).tolist()
# Rank as of a minute after the user's last event, so the request-time features are live.
last = events.loc[events["user_id"] == user, "event_timestamp"].max()
print(json.dumps({"user_id": user, "item_ids": items, "context": {"request_ts": int(last.timestamp()) + 60}}))
PY
)
echo
echo "Try it:"
echo "  curl -s -X POST http://127.0.0.1:$port/rank -H 'content-type: application/json' -d '$body'"
echo
curl -sf -X POST "http://127.0.0.1:$port/rank" -H 'content-type: application/json' -d "$body" | python -m json.tool
echo
echo "== /recommend: the same user's top 5 (candidates from co-visitation, categories, popularity)"
python - "$port" "$body" <<'PY'
import json
import sys

import httpx

port, body = sys.argv[1], json.loads(sys.argv[2])
request = {"user_id": body["user_id"], "k": 5, "context": body["context"]}
answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json=request, timeout=30).json()
for item in answer["items"]:
    print(f"   item {item['item_id']:>8}  score {item['score']:.4f}  from {item['source']}")
print(f"   model {answer['model']['name']} v{answer['model']['version']} ({answer['model']['variant']})")
PY
echo
# The deployment DAG against the running service: Bento built and smoke-tested, then the service is
# told to reload its champion.
CTR_SERVICE_URL="http://127.0.0.1:$port" run_dag ctr_deployment
python - <<'PY'
import json
from pathlib import Path
last = json.loads(Path("var/deployments/deployments.jsonl").read_text().splitlines()[-1])
print(f"   deployed: {json.dumps(last)[:300]}")
PY
echo
echo "MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/var/mlflow/mlflow.db --port 5000"
echo "Airflow UI: make airflow   (http://127.0.0.1:8080, login printed when ready)"
if [ "${DEMO_KEEP_SERVING:-1}" = "1" ]; then
  echo "Serving on http://127.0.0.1:$port (OpenAPI at /docs). Ctrl-C to stop."
  wait $server
fi
