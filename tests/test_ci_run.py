""".ci/run never lets the serving tests skip: without a Java 17 it can install, it fails before the tests."""
import shutil
import subprocess
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_ci_fails_when_java_cannot_be_installed(tmp_path):
    # A PATH with the shell tools the script needs, but no java, apt-get or sudo.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "head", "id", "seq", "df", "tail", "tr", "env", "shellcheck"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "DOCKER_TESTS_SKIP_REASON": "not in this test"}
    result = subprocess.run(["/bin/bash", str(PROJECT_DIR / ".ci" / "run")], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "installing openjdk-17-jre-headless" in result.stdout  # it tried
    assert "FAILING: the serving tests need Java 17" in result.stdout
