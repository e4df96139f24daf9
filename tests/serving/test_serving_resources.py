"""Issue 31, item 1: the workers follow the memory and the CPUs the container may use, read from fake cgroup
trees (v2 and v1) and /proc, and the Java frontend's heap follows the same memory (resources.py, settings.py)."""
from pathlib import Path

import pytest

from image_classifier.serving import resources, serve, settings

GIB = 1 << 30
HOST_RAM_KB = 24 * 1024 * 1024  # a 24 GiB host


def tree(root, files, own_cgroup="0::/", meminfo_kb=HOST_RAM_KB):
    """A fake / under `root`: /proc/self/cgroup, /proc/meminfo and the cgroup files given ({relative path: text})."""
    root = Path(root)
    (root / "proc" / "self").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "self" / "cgroup").write_text(own_cgroup + "\n")
    (root / "proc" / "meminfo").write_text(f"MemTotal:       {meminfo_kb} kB\nMemFree:        1000 kB\n")
    for path, text in files.items():
        (root / "sys" / "fs" / "cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys" / "fs" / "cgroup" / path).write_text(text + "\n")
    return root


V1_IN_DOCKER = "\n".join(f"{n}:{c}:/docker/0123abcd" for n, c in
                         ((5, "memory"), (4, "cpu,cpuacct"), (3, "cpuset"))) + "\n0::/docker/0123abcd"


def test_cgroup_v2_in_a_container_with_3_gb_and_one_cpu(tmp_path):
    root = tree(tmp_path, {"cgroup.controllers": "cpu memory", "memory.max": str(3 * GIB), "cpu.max": "100000 100000"})
    found = resources.read(root, cpu_set=2)
    assert found == resources.Resources(cores=1, memory_mib=3072, memory_source="cgroup memory limit")


def test_cgroup_v2_without_limits_is_the_host(tmp_path):
    root = tree(tmp_path, {"cgroup.controllers": "cpu memory", "memory.max": "max", "cpu.max": "max 100000"})
    assert resources.read(root, cpu_set=2) == resources.Resources(2, 24 * 1024, "host RAM")


def test_cgroup_v2_an_ancestor_s_limit_applies(tmp_path):
    """Without a cgroup namespace /proc/self/cgroup names the process's cgroup below the mount; a parent's limit
    (an inference component's slice, say) binds it too."""
    root = tree(tmp_path, {"cgroup.controllers": "cpu memory",
                           "sagemaker/memory.max": str(4 * GIB), "sagemaker/cpu.max": "250000 100000",
                           "sagemaker/model/memory.max": "max", "sagemaker/model/cpu.max": "max 100000"},
                own_cgroup="0::/sagemaker/model")
    assert resources.memory_limit(root) == 4 * GIB and resources.cpu_quota(root) == 2.5
    assert resources.read(root, cpu_set=8).cores == 3  # 2.5 CPUs of time: three cores, each busy part of it


def test_cgroup_v1_as_docker_mounts_it(tmp_path):
    """Docker on cgroup v1 (this machine): /proc/self/cgroup names /docker/<id>, which is not under the mount;
    the mount itself is the container's cgroup. No limit reads as 2^63-1 rounded to a page, and quota -1."""
    files = {"memory/memory.limit_in_bytes": str(3 * GIB), "cpu/cpu.cfs_quota_us": "150000",
             "cpu/cpu.cfs_period_us": "100000"}
    root = tree(tmp_path, files, own_cgroup=V1_IN_DOCKER)
    assert resources.read(root, cpu_set=4) == resources.Resources(2, 3072, "cgroup memory limit")
    unlimited = tree(tmp_path / "free", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                         "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
                     own_cgroup=V1_IN_DOCKER)
    assert resources.read(unlimited, cpu_set=4) == resources.Resources(4, 24 * 1024, "host RAM")


def test_a_limit_above_the_host_s_ram_is_the_host_s_ram(tmp_path):
    root = tree(tmp_path, {"memory/memory.limit_in_bytes": str(64 * GIB)}, own_cgroup=V1_IN_DOCKER,
                meminfo_kb=4 * 1024 * 1024)
    assert resources.read(root, cpu_set=2) == resources.Resources(2, 4096, "host RAM")


def test_nothing_readable_means_unknown_memory_and_the_cpu_set(tmp_path):
    assert resources.read(tmp_path, cpu_set=3) == resources.Resources(3, 0, "unknown")
    assert settings.load({}, cores=3, found=resources.read(tmp_path, cpu_set=3)).workers == 3  # no memory bound


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("memory_mib, cores, workers, threads", [
    (3072, 2, 1, 2),    # a 3 GB container: one worker, with both cores
    (4096, 4, 2, 4),    # 4 GiB: two workers of 1.2 GB beside serve and the frontend
    (6144, 8, 3, 8),    # the largest serverless size on 8 vCPUs
    (8192, 2, 2, 2),    # ml.m5.large-like: the cores bound it
    (2048, 16, 1, 16),  # less than one worker's room still starts one
])
def test_default_workers_follow_the_memory_as_well_as_the_cores(memory_mib, cores, workers, threads):
    served = settings.load({}, cores=cores, memory_mib=memory_mib)
    assert (served.workers, served.torch_threads) == (workers, threads)
    assert served.workers * settings.WORKER_MEMORY_MIB + settings.SUPERVISOR_MEMORY_MIB \
        + settings.jvm_heap_mib(memory_mib) + settings.JVM_NATIVE_MIB <= memory_mib or served.workers == 1


def test_the_container_s_own_limits_set_the_defaults(tmp_path):
    root = tree(tmp_path, {"cgroup.controllers": "cpu memory", "memory.max": str(3 * GIB), "cpu.max": "100000 100000"})
    served = settings.load({}, found=resources.read(root, cpu_set=2))
    assert (served.workers, served.torch_threads, served.memory_mib) == (1, 1, 3072)
    assert served.memory_source == "cgroup memory limit"


def test_the_launcher_s_memory_size_bounds_the_workers_and_the_heap():
    """A serverless endpoint: the launcher sends its memory size; the container may see more."""
    served = settings.load({settings.MEMORY_ENV: "3072"}, cores=6, memory_mib=24 * 1024)
    assert (served.workers, served.memory_mib, served.memory_source) == (1, 3072, settings.MEMORY_ENV)
    assert served.jvm_args == "-XX:+UseContainerSupport -Xmx256m"
    # It never raises what the container may use.
    assert settings.load({settings.MEMORY_ENV: "6144"}, cores=6, memory_mib=3072).memory_mib == 3072
    with pytest.raises(settings.SettingsError, match="IMAGE_CLASSIFIER_MEMORY_MB='lots' is not an integer"):
        settings.load({settings.MEMORY_ENV: "lots"}, cores=2, memory_mib=4096)


def test_chosen_workers_are_kept():
    served = settings.load({settings.WORKERS_ENV: "3"}, cores=2, memory_mib=3072)
    assert served.workers == 3


@pytest.mark.parametrize("memory_mib, heap", [(3072, 256), (8192, 512), (65536, 1024)])
def test_the_jvm_heap_follows_the_memory_and_honours_the_cpu_quota(tmp_path, memory_mib, heap):
    served = settings.load({}, cores=2, memory_mib=memory_mib)
    server = serve.Server(tmp_path / "model", 0, served, tmp_path)
    properties = dict(line.split("=", 1) for line in serve.mms_properties(server).splitlines())
    assert properties["vmargs"] == f"-XX:+UseContainerSupport -Xmx{heap}m"
    assert "-XX:-UseContainerSupport" not in properties["vmargs"]  # the toolkit's default: the host's RAM and CPUs
    assert settings.load({settings.JVM_ARGS_ENV: "-Xmx2g"}, cores=2, memory_mib=memory_mib).jvm_args == "-Xmx2g"


def test_the_per_worker_figure_is_the_measured_one():
    """bench/bench_serving.py: 2,458 MiB of RSS for the two default workers (docs/BENCHMARKS.md, 2026-12-04)."""
    assert settings.WORKER_MEMORY_MIB == 2458 // 2


def test_the_workers_are_as_many_as_the_memory_holds_and_no_more():
    """At every size: the workers, serve and the Java frontend (heap and native) fit, and one more worker would not."""
    assert settings.memory_workers(None) is None and settings.memory_workers(0) is None
    for memory_mib in range(1024, 70_000, 37):
        workers = settings.memory_workers(memory_mib)
        reserved = settings.SUPERVISOR_MEMORY_MIB + settings.jvm_heap_mib(memory_mib) + settings.JVM_NATIVE_MIB
        assert isinstance(workers, int) and workers >= 1, memory_mib
        assert workers == 1 or reserved + workers * settings.WORKER_MEMORY_MIB <= memory_mib, memory_mib
        assert reserved + (workers + 1) * settings.WORKER_MEMORY_MIB > memory_mib, memory_mib


@pytest.mark.parametrize("memory_mib, heap", [(None, 256), (0, 256), (4096, 256), (4112, 257), (8200, 512),
                                              (16384, 1024), (1 << 20, 1024)])
def test_the_heap_is_a_sixteenth_of_the_memory_within_its_bounds(memory_mib, heap):
    assert settings.jvm_heap_mib(memory_mib) == heap
    assert settings.jvm_args(memory_mib) == f"-XX:+UseContainerSupport -Xmx{heap}m"


def test_where_the_memory_figure_comes_from():
    assert settings.load({}, memory_mib=3072).memory_source == "given"  # the cores still read from the container
    assert settings.load({settings.MEMORY_ENV: "3072"}, cores=2, memory_mib=3072).memory_source == "given"  # no lower
    unknown = resources.Resources(2, 0, "unknown")
    served = settings.load({settings.MEMORY_ENV: "4096"}, found=unknown)
    assert (served.memory_mib, served.memory_source, served.workers) == (4096, settings.MEMORY_ENV, 2)
    assert settings.load({}, found=unknown).memory_source == "unknown"
