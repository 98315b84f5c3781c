# Core pinning for the bench scripts (sourced by benches/run.sh,
# benches/cluster.sh and benches/before-after.sh): with two CPUs or more the
# server runs on core 0 and the load on core 1, so that neither measures the
# other; with one they share it, with a warning. Sets SERVER_CORE, LOAD_CORE,
# PIN_SERVER and PIN_LOAD.
if [ "$(nproc)" -ge 2 ]; then
    SERVER_CORE=0 LOAD_CORE=1
    PIN_SERVER="taskset -c $SERVER_CORE" PIN_LOAD="taskset -c $LOAD_CORE"
else
    echo "warning: one CPU; the server and the load share it" >&2
    SERVER_CORE=0 LOAD_CORE=0 PIN_SERVER="" PIN_LOAD=""
fi
