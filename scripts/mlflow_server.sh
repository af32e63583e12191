#!/usr/bin/env bash
# An MLflow tracking server that every host of a sweep logs to.
#
#   scripts/mlflow_server.sh BACKEND_URI ARTIFACT_DIR [PORT] [HOST]
#   e.g. scripts/mlflow_server.sh postgresql://ftrun@127.0.0.1:5432/mlflow /srv/mlflow-artifacts 5000
#
# Runs in the foreground (start it with & or under a service manager); the sweep's hosts then set
# MLFLOW_TRACKING_URI=http://HOST:PORT (or tracking.uri=...). Artifacts are uploaded through the server
# (--artifacts-destination), so the hosts need no shared file system. HOST defaults to 127.0.0.1 (this machine
# only); on a cluster give the server's address and see `mlflow server --help` for --allowed-hosts.
set -euo pipefail
backend=${1:?usage: $0 BACKEND_URI ARTIFACT_DIR [PORT] [HOST]}
artifacts=${2:?usage: $0 BACKEND_URI ARTIFACT_DIR [PORT] [HOST]}
port=${3:-5000}
host=${4:-127.0.0.1}
mkdir -p "$artifacts"
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-2}"
