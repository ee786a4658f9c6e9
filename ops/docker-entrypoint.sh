#!/bin/sh
# Container entrypoint: give the data and metrics folders to the eventflow user, then run the command
# as that user (never as root). See the Dockerfile.
set -eu
if [ "$(id -u)" = "0" ]; then
    for dir in "${EVENTFLOW_DATA_DIR:-/data}" "${PROMETHEUS_MULTIPROC_DIR:-/tmp/eventflow-metrics}"; do
        mkdir -p "$dir"
        chown eventflow:eventflow "$dir"
    done
    exec setpriv --reuid=10001 --regid=10001 --clear-groups -- "$@"
fi
exec "$@"
