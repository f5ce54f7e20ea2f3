#!/usr/bin/env bash
# The main job: run the ctr_pipeline DAG with Airflow on the Taobao events, then serve the champion.
# DEMO_PORT (default 3000) picks the port; DEMO_KEEP_SERVING=0 stops the server after the example request.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
port="${DEMO_PORT:-3000}"

echo "== Airflow metadata DB (SQLite under var/airflow)"
mkdir -p var
ctr airflow db migrate > var/airflow-migrate.log 2>&1 || { cat var/airflow-migrate.log; exit 1; }

echo "== airflow dags test ctr_pipeline (log: var/demo-dag-run.log)"
started=$(date +%s)
ctr airflow dags test ctr_pipeline > var/demo-dag-run.log 2>&1 || { tail -50 var/demo-dag-run.log; exit 1; }
grep -q "state=success" var/demo-dag-run.log || { tail -50 var/demo-dag-run.log; echo "DAG run did not succeed"; exit 1; }
echo "   DAG run succeeded in $(( $(date +%s) - started )) s"
python - <<'PY'
import json
from pathlib import Path
report = json.loads(Path("var/quarantine/report.json").read_text())
evaluation = json.loads(Path("var/models/candidates/evaluation.json").read_text())
print(f"   validation: {report['input_rows']} rows in, {report['accepted_rows']} accepted, "
      f"{report['quarantined_rows']} quarantined (var/quarantine/)")
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
events = pd.read_parquet("var/lake/accepted_events.parquet")
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
echo "MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/var/mlflow/mlflow.db --port 5000"
echo "Airflow UI: .venv/bin/ctr airflow standalone   (then http://127.0.0.1:8080)"
if [ "${DEMO_KEEP_SERVING:-1}" = "1" ]; then
  echo "Serving on http://127.0.0.1:$port (OpenAPI at /docs). Ctrl-C to stop."
  wait $server
fi
