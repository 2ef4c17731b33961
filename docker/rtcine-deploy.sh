#!/usr/bin/env bash
# The deployment: a warm, long-running `rtcine serve` and Gadgetron, started and supervised
# together. Gadgetron's chain rtcine_connect.xml hands each stream to the server
# (<connect port="18000"/>), which has imported torch and sigpy, run ESPIRiT once and loaded
# the real-time model before Gadgetron is even started.
#
#   rtcine-deploy.sh [GADGETRON_ARGS...]       (the arguments go to gadgetron, after -p PORT)
#
# 1. starts `rtcine serve --port $RTCINE_PORT --ready-file $RTCINE_READY_FILE $RTCINE_SERVE_ARGS`;
# 2. waits until it is warm (`python -m gadgets.health`, at most $RTCINE_WARM_TIMEOUT s);
# 3. starts `gadgetron -p $GADGETRON_PORT GADGETRON_ARGS...`;
# 4. when either exits, stops the other and exits non-zero, so that the container's (or
#    systemd's) restart policy starts both again; SIGTERM/SIGINT stop both and exit 0.
#
# Environment (defaults): RTCINE_PORT (18000, the port in chains/rtcine_connect.xml),
# GADGETRON_PORT (9002), RTCINE_READY_FILE (/tmp/rtcine-ready), RTCINE_SERVE_ARGS (empty:
# the chain's configuration decides, realtime by default; e.g. "--preset causal" fixes one),
# RTCINE_WARM_TIMEOUT (300), RTCINE_CONDA_ENV (gadgetron: activated when /opt/conda exists,
# as the official image's entrypoint does). Logs of both go to this script's stdout/stderr.
set -uo pipefail

RTCINE_PORT="${RTCINE_PORT:-18000}"
GADGETRON_PORT="${GADGETRON_PORT:-9002}"
RTCINE_READY_FILE="${RTCINE_READY_FILE:-/tmp/rtcine-ready}"
RTCINE_SERVE_ARGS="${RTCINE_SERVE_ARGS:-}"
RTCINE_WARM_TIMEOUT="${RTCINE_WARM_TIMEOUT:-300}"
RTCINE_CONDA_ENV="${RTCINE_CONDA_ENV:-gadgetron}"

if [[ -f /opt/conda/etc/profile.d/conda.sh ]]; then
    # shellcheck disable=SC1091
    . /opt/conda/etc/profile.d/conda.sh
    conda activate "${RTCINE_CONDA_ENV}"
fi
# one OpenBLAS thread, passive OpenMP waits: busy-waiting threads slow the real-time chain
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

say() { echo "rtcine-deploy: $*" >&2; }
serve_pid="" gadgetron_pid=""
stop_all() {
    for pid in ${gadgetron_pid} ${serve_pid}; do kill -TERM "${pid}" 2>/dev/null; done
    wait 2>/dev/null
}
trap 'say "stopping"; stop_all; exit 0' TERM INT

rm -f "${RTCINE_READY_FILE}"
# shellcheck disable=SC2086  # RTCINE_SERVE_ARGS is a list of options
rtcine -v serve --port "${RTCINE_PORT}" --ready-file "${RTCINE_READY_FILE}" ${RTCINE_SERVE_ARGS} &
serve_pid=$!
say "rtcine serve (pid ${serve_pid}) warming up on port ${RTCINE_PORT}"
waited=0
until python -m gadgets.health --port "${RTCINE_PORT}" --ready-file "${RTCINE_READY_FILE}" -q 2>/dev/null; do
    if ! kill -0 "${serve_pid}" 2>/dev/null; then
        wait "${serve_pid}"; code=$?
        say "rtcine serve exited (${code}) before it was ready"
        exit $(( code == 0 ? 1 : code ))
    fi
    if (( waited >= RTCINE_WARM_TIMEOUT * 2 )); then
        say "rtcine serve not ready after ${RTCINE_WARM_TIMEOUT} s"
        stop_all
        exit 1
    fi
    sleep 0.5
    waited=$(( waited + 1 ))
done
say "rtcine serve ready; starting gadgetron on port ${GADGETRON_PORT}"
gadgetron -p "${GADGETRON_PORT}" "$@" &
gadgetron_pid=$!

wait -n "${serve_pid}" "${gadgetron_pid}"
code=$?
if ! kill -0 "${serve_pid}" 2>/dev/null; then gone="rtcine serve"; else gone="gadgetron"; fi
say "${gone} exited (${code}): stopping the other, exiting for a restart"
stop_all
exit $(( code == 0 ? 1 : code ))
