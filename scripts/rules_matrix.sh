#!/usr/bin/env bash
# Run the debugging-rules tests (tests/diagnostics/test_debugger_rules.py) under other CPU settings, to show that no crafted run
# sits on a threshold: intra-op threads 1 and 2 (the crafted runs and the real job), deterministic algorithms
# off and on, and the instruction set this CPU picks, AVX2, and SSE4 (oneDNN, MKL and ATen's own kernels
# forced down together; a level above the CPU's own has no effect). One line per combination; exits non-zero
# if any failed.
#
# Usage: scripts/rules_matrix.sh [PYTEST_ARGS...]     (PY: the interpreter, default .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/.." || exit
py=${PY:-.venv/bin/python}

isa_env() {
    case $1 in
        native) ;;
        avx2) echo "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2" ;;
        sse4) echo "ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default" ;;
    esac
}

combinations=()
for isa in native avx2; do
    for threads in 1 2; do
        for deterministic in 0 1; do combinations+=("$isa $threads $deterministic"); done
    done
done
combinations+=("sse4 2 0" "sse4 1 1")

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
     "torch picks $("$py" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
failed=0
for combination in "${combinations[@]}"; do
    read -r isa threads deterministic <<<"$combination"
    # shellcheck disable=SC2046  # isa_env prints NAME=VALUE words on purpose
    summary=$(env $(isa_env "$isa") OMP_NUM_THREADS="$threads" RULES_TEST_THREADS="$threads" \
        RULES_TEST_DETERMINISTIC="$deterministic" "$py" -m pytest tests/diagnostics/test_debugger_rules.py -q -p no:cacheprovider "$@" 2>&1 | tail -1)
    status=ok
    [[ $summary == *failed* || $summary == *error* || $summary != *passed* ]] && { status=FAILED; failed=1; }
    printf '%-6s isa=%-6s threads=%s deterministic=%s  %s\n' "$status" "$isa" "$threads" "$deterministic" "$summary"
done
exit "$failed"
