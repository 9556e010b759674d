#!/bin/sh
# Starts one EduRanker component; the first argument names it. The same image runs
# every service, the catalogue loader and Docker's health check.
#
#   entrypoint.sh reranker|collector|aggregator|trainer [ARGS...]
#   entrypoint.sh load-catalogue [FILE]      (default: the sample catalogue)
#   entrypoint.sh healthcheck [PATH]         (default: /health; compose uses /ready)
set -eu

# The health check runs as a separate process that cannot know which service this
# container started, so the service leaves its port here (best effort: the root
# filesystem may be read-only, and Kubernetes probes do not need it). One-shot commands
# (load-catalogue) serve no HTTP: compose disables their health check.
PORT_FILE=${EDURANKER_HEALTH_PORT_FILE:-/tmp/eduranker-http-port}
DEFAULT_CATALOGUE=/app/data/sample_catalogue.jsonl

usage() {
    echo "usage: $0 reranker|collector|aggregator|trainer|load-catalogue [FILE]|healthcheck [PATH]" >&2
    exit 64
}

# Mirrors shared/settings.py: EDURANKER_<SERVICE>_PORT, with the same defaults.
service_port() {
    case "$1" in
        reranker) echo "${EDURANKER_RERANKER_PORT:-8000}" ;;
        collector) echo "${EDURANKER_COLLECTOR_PORT:-8001}" ;;
        aggregator) echo "${EDURANKER_AGGREGATOR_PORT:-8002}" ;;
        trainer) echo "${EDURANKER_TRAINER_PORT:-8003}" ;;
    esac
}

[ "$#" -ge 1 ] || usage
command=$1
shift

case "$command" in
    reranker | collector | aggregator | trainer)
        service_port "$command" >"$PORT_FILE" 2>/dev/null || true
        # exec: the service becomes the container's main process and receives SIGTERM.
        exec python -m "services.$command" "$@"
        ;;
    load-catalogue)
        [ "$#" -ge 1 ] || set -- "$DEFAULT_CATALOGUE"
        exec python -m tools.cli load-catalogue "$@"
        ;;
    healthcheck)
        if [ ! -r "$PORT_FILE" ]; then
            echo "health check failed: no service has started in this container yet" >&2
            exit 1
        fi
        exec python -c '
import sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"health check failed: {exc}", file=sys.stderr)
    sys.exit(1)
' "$(cat "$PORT_FILE")" "${1:-/health}"
        ;;
    *)
        usage
        ;;
esac
