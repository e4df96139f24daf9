"""Issue 31, item 2: one record of the serving capacity (bench/serving_capacity.json), written by the serving
benchmark and read by the autoscaling default; a new measurement more than 20 % away from it fails the benchmark."""
import importlib.util
import json

import pytest

from conftest import needs_container_packages
from launcher import LauncherError, scaling, transform
from launcher.cli import ENDPOINT_INSTANCE

BENCHMARKS_FIGURE = 56.95  # docs/BENCHMARKS.md, default settings, 2 vCPUs, 2026-12-07


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serving", scaling.CAPACITY_FILE.parent / "bench_serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_code_s_figure_is_the_benchmark_s_within_20_percent():
    recorded = scaling.measured_capacity()
    assert scaling.capacity_drift(BENCHMARKS_FIGURE, scaling.MEASURED_PICTURES_PER_SECOND) <= scaling.CAPACITY_DRIFT_LIMIT
    assert scaling.MEASURED_PICTURES_PER_SECOND == recorded["pictures_per_second"]  # read, not copied
    assert recorded["date"] and recorded["source"].startswith("bench/bench_serving.py")
    # Measured per instance of the deploy default: its vCPUs are the benchmark's.
    assert transform.INSTANCE_RESOURCES[ENDPOINT_INSTANCE][0] == recorded["vcpus"]


def test_a_missing_or_broken_record_is_a_clear_error(tmp_path):
    with pytest.raises(LauncherError, match="run bench/bench_serving.py to record it"):
        scaling.measured_capacity(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"pictures_per_second": 0, "vcpus": 2}))
    with pytest.raises(LauncherError, match="must be positive"):
        scaling.measured_capacity(tmp_path / "bad.json")


def rounds(*throughputs):
    return [{"default": {"throughput": t, "workers": 2, "engine": "openvino", "clients": 4}} for t in throughputs]


@needs_container_packages
def test_the_benchmark_writes_what_scaling_reads_and_fails_on_drift(tmp_path, capsys):
    bench = load_bench()
    record = tmp_path / "capacity.json"
    earlier = dict(json.loads(scaling.CAPACITY_FILE.read_text()), pictures_per_second=19.74)  # a record of 19.74/s
    record.write_text(json.dumps(earlier))
    assert bench.record_capacity(rounds(19.0, 20.5, 19.9), 2, record) is None  # within 20 %: recorded
    written = scaling.measured_capacity(record)
    assert (written["pictures_per_second"], written["vcpus"], written["spread"]) == (19.9, 2, [19.0, 20.5])
    problem = bench.record_capacity(rounds(8.4, 8.41, 8.5), 2, record)  # the stale engine's figure
    assert "58% away from the 19.9 recorded before" in problem
    assert scaling.measured_capacity(record)["pictures_per_second"] == 8.41  # recorded all the same
