#!/usr/bin/env bash
# Start the MLflow UI on 127.0.0.1 over the configured tracking store (default: mlflow/mlflow.db).
# Arguments go to `sketchpipe ui` (e.g. --port 5001, --tracking-uri URI).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/sketchpipe ui "$@"
