#!/bin/bash
# The image's entry point under tini: `entrypoint.sh train|serve`.
#
# tini (PID 1, with -g) sends SIGTERM to this whole process group. The toolkit's `train` dies at once on
# SIGTERM, while the training script it started is still saving its checkpoint; and the container
# ends, killing everything left, as soon as tini's child exits. So after a SIGTERM this script waits
# (up to STOP_GRACE_SECONDS; SageMaker sends SIGKILL after 120 s) until every other process is gone.
set -u
grace=${STOP_GRACE_SECONDS:-110}
terminated=""
trap 'terminated=1' TERM
trap 'terminated=1; kill -TERM 0' INT  # Ctrl-C through `docker run`: a graceful stop too

"$@" &
child=$!
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break  # `wait` returns early when the trap runs
done

if [[ -n $terminated ]]; then
    for ((second = 0; second < grace; second++)); do
        others=""
        for proc in /proc/[0-9]*; do  # no subshell here: this loop adds no process of its own
            pid=${proc#/proc/}
            if [[ $pid != 1 && $pid != "$$" ]]; then
                others=1
                break
            fi
        done
        [[ -n $others ]] || break
        sleep 1
    done
fi
exit "$status"
