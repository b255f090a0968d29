#!/usr/bin/env bash
# Start the MLflow tracking server that the TRM trainers and sweeps log to.
#
#   mlflow/serve.sh                                   # sqlite:///mlflow.db + ./mlartifacts on 127.0.0.1:5000
#   mlflow/serve.sh --artifacts-destination s3://BUCKET/mlflow
#   mlflow/serve.sh --backend-store-uri postgresql://user@db-host:5432/mlflow --host 0.0.0.0
#
# Flags (each also settable by the env var in brackets; a flag wins):
#   --backend-store-uri URI      [MLFLOW_BACKEND_STORE_URI]     default sqlite:///mlflow.db (relative to the cwd)
#   --artifacts-destination URI  [MLFLOW_ARTIFACTS_DESTINATION] default ./mlartifacts
#   --host HOST                  [MLFLOW_HOST]                  default 127.0.0.1 (this machine only)
#   --port PORT                  [MLFLOW_PORT]                  default 5000
#   -- ARGS...                   passed to `mlflow server` unchanged (e.g. --allowed-hosts)
#
# S3-compatible stores (MinIO, moto): set MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL,
# which boto3 reads by itself). Credentials come from the usual AWS chain
# (instance profile, AWS_PROFILE, env vars); none are passed on the command line.
set -euo pipefail

backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-./mlartifacts}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
extra=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "serve.sh: $1 needs a value" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend-store-uri) need "$@"; backend="$2"; shift 2 ;;
    --artifacts-destination) need "$@"; artifacts="$2"; shift 2 ;;
    --host) need "$@"; host="$2"; shift 2 ;;
    --port) need "$@"; port="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "serve.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$backend" in
  postgresql:*|postgresql+*)
    python -c "import psycopg2" 2>/dev/null || python -c "import psycopg" 2>/dev/null || {
      echo "serve.sh: $backend needs a PostgreSQL driver: pip install psycopg2-binary" >&2; exit 2; } ;;
  *) ;;  # other SQLAlchemy URIs (mysql://...) go to MLflow as they are
esac

if [[ "$artifacts" == s3://* ]]; then
  if [[ -n "${MLFLOW_S3_ENDPOINT_URL:-}" ]]; then
    echo "serve.sh: S3 endpoint MLFLOW_S3_ENDPOINT_URL=$MLFLOW_S3_ENDPOINT_URL" >&2
  elif [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
    echo "serve.sh: S3 endpoint AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL" >&2
  fi
fi

# The built-in job runner (MLflow 3.x) spawns extra workers that TRM does not
# use; one web worker keeps the server at a few hundred MiB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

if command -v mlflow >/dev/null 2>&1; then cmd=(mlflow); else cmd=(python -m mlflow); fi
echo "serve.sh: backend=$backend artifacts=$artifacts on http://$host:$port" >&2
exec "${cmd[@]}" server \
  --backend-store-uri "$backend" \
  --artifacts-destination "$artifacts" \
  --serve-artifacts \
  --host "$host" \
  --port "$port" \
  --workers 1 \
  ${extra[@]+"${extra[@]}"}
