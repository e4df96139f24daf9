"""Load and soak on loopback, short versions (bench/soak_serving.py runs the full 8 clients x 60 s): mixed
good and hostile requests get exactly their expected answers, the workers' memory does not grow, and a
worker killed under load is replaced while requests keep succeeding."""
import shutil

import pytest

import serving_harness as harness
import serving_load as load
import serving_samples as samples

pytestmark = [harness.require_java(pytest), pytest.mark.slow]

CLIENTS = 8
SECONDS = 20
RSS_GROWTH_LIMIT = 150 * 1024 * 1024  # a leak of one decoded picture per request would pass this in seconds


@pytest.fixture(scope="module")
def server(trained_model_dir, tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("opt_ml")
    shutil.copytree(trained_model_dir, base_dir / "model")
    server = harness.Server(base_dir, SAGEMAKER_MODEL_SERVER_WORKERS=2)
    try:
        server.wait_ready(samples.png())
        yield server
    finally:
        exit_code, alive = server.stop()
    assert exit_code == 0 and not alive


def test_mixed_good_and_hostile_load_gets_only_expected_answers(server):
    workers = {p.pid for p in server.workers()}
    # A first round brings each worker's allocator to its high-water mark (the biggest decode it will see);
    # what the workers hold when idle after it must not grow over a second round.
    warm_up = load.run_load(server, clients=CLIENTS, seconds=SECONDS)
    settled = load.idle_rss(server)
    result = load.run_load(server, clients=CLIENTS, seconds=SECONDS)
    end = load.idle_rss(server)
    for run in (warm_up, result):
        assert len(run.answers) > 2 * len(load.mixed_bodies())  # every kind, several times
        assert run.unexpected() == []
    assert {p.pid for p in server.workers()} == workers  # no worker died
    assert set(settled) == set(end) == workers
    for pid in workers:
        assert end[pid] - settled[pid] < RSS_GROWTH_LIMIT, \
            f"worker {pid}: {settled[pid] / 2**20:.0f} -> {end[pid] / 2**20:.0f} MiB idle"


def test_a_worker_killed_under_load_is_replaced_and_requests_keep_succeeding(server):
    report = {}
    result = load.run_load(server, clients=CLIENTS, seconds=SECONDS, during=load.kill_a_worker(server, 3, report))
    assert "replaced_at" in report, "no replacement worker within 120 s"
    assert report["victim"] not in report["workers"]
    # Only the request the killed worker was answering may fail, and only as a server error.
    failures = result.unexpected()
    assert len(failures) <= 1 and all(got in (500, 503) for _, _, got in failures), failures
    after_kill = [got for started, _, expected, got in result.answers
                  if started > report["killed_at"] and expected == 200]
    assert after_kill and set(after_kill) == {200}
    assert result.unexpected(after=report["replaced_at"]) == []
