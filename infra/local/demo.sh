#!/usr/bin/env bash
# make demo: local stack up -> retrain (Airflow) -> optimize_model (Airflow) -> where to look.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" TF_CPP_MIN_LOG_LEVEL=2
started=$(date +%s)

python infra/local/stack.py up
# shellcheck disable=SC1091
source "${TFOPT_STACK_DIR:-$PWD/.stack}/stack.env"
demo_root="s3://${TFOPT_BUCKET}/demo"
if python infra/local/stack.py status --json \
    | python -c 'import json, sys; sys.exit(0 if any(s["service"].startswith("airflow") and s["running"] for s in json.load(sys.stdin)["services"]) else 1)'; then
  # A running scheduler would also pick up the dags-test runs' tasks; test on a database of its own.
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$(python infra/local/stack.py dags-test-db)
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  echo "==> the Airflow UI is running: this demo records its DAG runs in a separate database"
fi
log_dir="${TFOPT_STACK_DIR}/logs"

echo "==> retrain_model: training the demo model on freshly drawn shapes (about 2 minutes on an AVX-512 CPU, 4-7 on an AVX2-only one)"
airflow dags test retrain_model -c "{\"seed\": 0, \"output_uri\": \"${demo_root}\"}" \
  > "${log_dir}/demo-retrain.log" 2>&1 \
  || { tail -n 40 "${log_dir}/demo-retrain.log"; echo "retrain_model failed; log: ${log_dir}/demo-retrain.log"; exit 1; }

conf=$(printf '{"model_uri": "%s/model/model.keras", "eval_data_uri": "%s/eval", "calibration_data_uri": "%s/calibration", "registered_model_name": "tfopt-demo"}' \
  "$demo_root" "$demo_root" "$demo_root")
echo "==> optimize_model: export, convert, validate, benchmark, select, register, report"
airflow dags test optimize_model -c "$conf" > "${log_dir}/demo-optimize.log" 2>&1 \
  || { tail -n 60 "${log_dir}/demo-optimize.log"; echo "optimize_model failed; log: ${log_dir}/demo-optimize.log"; exit 1; }

tfopt show --registered-model-name tfopt-demo
echo "logs:      ${log_dir}/demo-retrain.log, ${log_dir}/demo-optimize.log"
echo "took:      $(( $(date +%s) - started )) s. The stack keeps running: 'make up' adds the Airflow UI, 'make down' stops it."
