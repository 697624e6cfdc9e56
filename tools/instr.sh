#!/bin/sh
# User-space instructions per control() call, deterministic (callgrind; syscalls are not
# counted): a run with CALLS calls minus a run with none, divided by CALLS.
#   tools/instr.sh MODE NPIPES [CALLS] [data|-] [PER_CALL]   MODE: legacy | best2_ws | rand | raw
# PYTHON (default .venv/bin/python) and SKQUEUE_PURE are honoured.
set -e
mode=$1; n=$2; calls=${3:-2000}; extra=${4:--}; per=${5:-$2}
py=${PYTHON:-.venv/bin/python}
dir=$(dirname "$0")
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$py" "$dir/instr_target.py" \
        "$mode" "$n" "$1" "$extra" "$per" 2>&1 | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
a=$(count "$calls")
b=$(count 0)
echo "$mode pipes=$n per_call=$per calls=$calls $extra: $(( (a - b) / calls )) instructions/call"
