"""The launcher's platform side: local runners that emulate SageMaker, sample data, AWS session helpers.

`launch.py` holds the CLI and the SageMaker recipes; this package holds what they need. It talks to the
container only through the platform contract (paths, environment, HTTP), never by importing training
internals, except the shared constants in `image_classifier.metrics` / `image_classifier.constants`.
"""
import datetime
import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOCAL_JOBS_DIR = PROJECT_DIR / "local_jobs"
SAMPLE_DIR = PROJECT_DIR / "data" / "digits"
ENTRY_SHIM = PROJECT_DIR / "docker" / "code" / "train.py"
IMAGE_NAME = "image-classifier"  # the image's name: build_and_push.sh's default --name and ECR repository
IMAGE_URI_FILE = PROJECT_DIR / ".image-uri"  # written by build_and_push.sh ($IMAGE_URI_FILE overrides)
IMAGE_URI_FILE_ENV = "IMAGE_URI_FILE"


def recorded_image_uri():
    """The image URI build_and_push.sh recorded (in $IMAGE_URI_FILE, else .image-uri), or None."""
    path = Path(os.environ.get(IMAGE_URI_FILE_ENV) or IMAGE_URI_FILE)
    return (path.read_text().strip() if path.is_file() else "") or None


def unique_name(prefix=IMAGE_NAME):
    """A unique, SageMaker-valid name for a job, endpoint or model (local jobs too): `prefix-<UTC time to the
    microsecond>`, 63 characters at most (a tuning job's 32 hold the short `ic-tune` prefix and the time)."""
    return f"{prefix}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S-%f}"[:63]


class LauncherError(Exception):
    """A problem the user can fix; launch.py prints it as one line, without a traceback."""
