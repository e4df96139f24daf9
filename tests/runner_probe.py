"""Run `toolkit_entry.main()` for real over the /opt/ml tree SAGEMAKER_BASE_DIR names, intercepting only the
final process spawn: the toolkit's shell (torchrun runner) or Popen (plain process runner). Each command it
would have run is recorded in the JSON file argv[1] ({"shell": [strings], "exec": [argv lists]}), and a
harmless process runs in its place. A test runs this as a separate process, because the toolkit reads
SAGEMAKER_BASE_DIR once, at import."""
import asyncio
import json
import subprocess
import sys
import types

spawned = {"shell": [], "exec": []}
_real_shell, _real_popen = asyncio.create_subprocess_shell, subprocess.Popen


async def _record_shell(cmd, **kwargs):
    spawned["shell"].append(cmd)
    return await _real_shell("exit 0", **kwargs)


def _record_popen(cmd, **kwargs):
    spawned["exec"].append(list(cmd))
    return _real_popen([sys.executable, "-c", "pass"], **kwargs)


if __name__ == "__main__":
    asyncio.create_subprocess_shell = _record_shell
    import sagemaker_training.process as toolkit_process  # noqa: E402

    toolkit_process.subprocess = types.SimpleNamespace(Popen=_record_popen)  # only the runner's own Popen
    from image_classifier.training import toolkit_entry  # noqa: E402

    try:
        toolkit_entry.main()
    finally:
        with open(sys.argv[1], "w") as out:
            json.dump(spawned, out)
