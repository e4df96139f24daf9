"""toolkit_entry's runner choice with the real toolkit 4.9 underneath, over real-shaped local trees
(resourceconfig.json with `instance_groups`), intercepting only the final process spawn (runner_probe.py).

The GPU count is faked the way the toolkit reads it: an `nvidia-smi` on PATH that lists N GPUs. Every tree
carries hostile values (hyperparameters, the job name) that must not reach the command. Channel names are
not among them: SageMaker accepts only [A-Za-z0-9.-_] there, and they reach environment variables only."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER, distribution_hyperparameter
from launcher.local import hosts, trees
from conftest import PROJECT_DIR, TINY_HYPERPARAMETERS

PROBE = PROJECT_DIR / "tests" / "runner_probe.py"
ENTRY = "train.py"  # the shim the trees carry in code/, what SAGEMAKER_PROGRAM names


def hostile(marker):
    """Values with shell syntax that would create `marker` if a shell ever evaluated them."""
    return {"lr": f"0.01 $(touch {marker})", "_note": f"$(touch {marker})", "sagemaker_note": f"`touch {marker}`",
            "sagemaker_job_name": f"x;touch {marker}"}


def fake_nvidia_smi(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(count)))
    script.chmod(0o755)
    return folder


def probe(tmp_path, job, gpus, marker):
    """(shell commands, exec commands) toolkit_entry.main() spawned over `job`'s tree with `gpus` GPUs."""
    record = tmp_path / f"spawned-{job.name}.json"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.dir), "SAGEMAKER_PROGRAM": ENTRY,
           "SM_STUDIO_LOCAL_MODE": "true", "AWS_EC2_METADATA_DISABLED": "true",
           "TRAINING_JOB_NAME": f"job$(touch {marker})",
           "PATH": f"{fake_nvidia_smi(tmp_path / f'gpus-{gpus}', gpus)}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, str(PROBE), str(record)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    spawned = json.loads(record.read_text())
    return spawned["shell"], spawned["exec"]


def one_host(tmp_path, flag, marker):
    hps = dict(TINY_HYPERPARAMETERS, **hostile(marker))
    if flag is not None:
        hps[TORCH_DISTRIBUTED_HYPERPARAMETER] = flag
    return trees.prepare_job(tmp_path / "jobs", f"one-{flag}", {"train": tmp_path}, hps)


def assert_shell_command(shell, expected, marker):
    """One shell command whose words are exactly `expected`: nothing else, nothing the user sent."""
    assert len(shell) == 1
    assert shlex.split(shell[0]) == expected
    assert "touch" not in shell[0] and "$" not in shell[0] and not marker.exists()


def test_local_trees_write_a_real_jobs_resource_config(tmp_path):
    job = hosts.prepare_hosts(tmp_path / "jobs", "rc", {"train": tmp_path}, {}, 2)[1]
    assert json.loads(job.paths.resource_config.read_text()) == {
        "current_host": "algo-2", "current_instance_type": "local", "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1", "algo-2"],
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "local",
                             "hosts": ["algo-1", "algo-2"]}],
        "network_interface_name": "lo"}


@pytest.mark.parametrize("flag", ["auto", None, "true"])
def test_one_host_with_four_gpus_runs_torchrun_with_four_processes(tmp_path, flag):
    marker = tmp_path / "injected"
    shell, spawned = probe(tmp_path, one_host(tmp_path, flag, marker), 4, marker)
    assert spawned == []
    # One node: the toolkit adds no master address or node rank.
    assert_shell_command(shell, ["torchrun", "--nnodes", "1", "--nproc_per_node", "4", ENTRY], marker)


def test_two_hosts_with_one_gpu_each_run_torchrun_across_both(tmp_path):
    marker = tmp_path / "injected"
    hps = dict(TINY_HYPERPARAMETERS, **hostile(marker),
               **{TORCH_DISTRIBUTED_HYPERPARAMETER: distribution_hyperparameter(2)})
    jobs = hosts.prepare_hosts(tmp_path / "jobs", "two", {"train": tmp_path}, hps, 2)
    for rank, job in enumerate(jobs):
        shell, spawned = probe(tmp_path, job, 1, marker)
        assert spawned == []
        assert_shell_command(shell, ["torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "algo-1",
                                     "--master_port", "7777", "--node_rank", str(rank), ENTRY], marker)


@pytest.mark.parametrize("flag,gpus", [("auto", 1), ("auto", 0), ("false", 4)])
def test_one_process_jobs_run_the_script_without_a_shell_or_arguments(tmp_path, flag, gpus):
    marker = tmp_path / "injected"
    shell, spawned = probe(tmp_path, one_host(tmp_path, flag, marker), gpus, marker)
    assert shell == [] and spawned == [[sys.executable, ENTRY]] and not marker.exists()


def test_the_launchers_value_for_one_instance_is_auto():
    assert distribution_hyperparameter(1) == "auto" and distribution_hyperparameter(3) == "true"


@pytest.mark.parametrize("key,value", [(TORCH_DISTRIBUTED_HYPERPARAMETER, "yes"),
                                       ("sagemaker_mpi_num_of_processes_per_host", "2 $(touch x)"),
                                       ("sagemaker_mpi_num_of_processes_per_host", "0")])
def test_a_bad_distribution_setting_fails_naming_it(tmp_path, key, value):
    job = trees.prepare_job(tmp_path / "jobs", "bad", {"train": tmp_path}, dict(TINY_HYPERPARAMETERS, **{key: value}))
    record = tmp_path / "spawned.json"
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.dir), "SAGEMAKER_PROGRAM": ENTRY,
           "SM_STUDIO_LOCAL_MODE": "true", "AWS_EC2_METADATA_DISABLED": "true"}
    result = subprocess.run([sys.executable, str(PROBE), str(record)], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and json.loads(record.read_text()) == {"shell": [], "exec": []}
    assert f"Hyperparameter '{key}'" in result.stderr + result.stdout
