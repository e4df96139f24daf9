"""Copy a local dataset folder to S3, skipping files already there with the same size and MD5.

The layout in S3 is the folder's own (`train/<class>/<picture>`, `valid/...`, `test/...`), so the training
job's channels are `<uri>/train/`, `<uri>/valid/`, `<uri>/test/` (with the slash: an S3 prefix `train`
would also match `train_old`). Objects are written with `PutObject` and a `Content-MD5` (S3 checks it on
arrival), so their ETag is the MD5 and a second upload can compare it. `delete=True` also removes the
objects under the prefix that no longer exist locally.
"""
import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import LauncherError

SPLITS = ("train", "valid", "test")
PARALLEL_UPLOADS = 8
WEIGHTS_SUFFIXES = (".pth", ".pt")  # what the job's `pretrained` channel reads
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


def split_s3_uri(uri):
    if not uri.startswith("s3://") or not uri[5:].split("/")[0]:
        raise LauncherError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def folder_uri(uri):
    """`uri` as the S3 prefix of exactly that folder: ending in `/`, since an S3 prefix is a string prefix
    (`s3://b/photos` also matches `s3://b/photos-old/...`). Checked as an S3 URI."""
    split_s3_uri(uri)
    return uri.rstrip("/") + "/"


def dataset_files(root):
    """{relative posix path: Path} of the files to upload; the folder must hold train/ (and valid/, test/)."""
    root = Path(root)
    if not root.is_dir():
        raise LauncherError(f"dataset folder {root} does not exist")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in splits:
        raise LauncherError(f"{root} has no train/ folder: expected the dogImages layout train/ valid/ test/, "
                            "one sub-folder per class")
    files = {}
    for split in splits:
        for path in sorted((root / split).rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                files[path.relative_to(root).as_posix()] = path
    return splits, files


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest


def existing_objects(s3, bucket, prefix):
    """{key: (size, etag)} under the prefix."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
    return found


def upload(s3, root, uri, parallel=PARALLEL_UPLOADS, progress=True, delete=False):
    """Sync the dataset folder `root` to `uri`; returns (splits, uploaded count, skipped count, deleted count)."""
    splits, files = dataset_files(root)
    return (splits, *sync(s3, files, uri, parallel, progress, delete))


def weights_files(path):
    """{name: Path} of the weights to send as the `pretrained` channel: a .pth/.pt file, or those in a folder."""
    path = Path(path)
    if path.is_file() and path.suffix in WEIGHTS_SUFFIXES:
        return {path.name: path}
    if path.is_dir():
        found = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
                 if p.is_file() and p.suffix in WEIGHTS_SUFFIXES}
        if found:
            return found
    raise LauncherError(f"--pretrained-weights {path}: expected a .pth/.pt state_dict file, a folder holding one, "
                        "or an s3:// URI")


def sync(s3, files, uri, parallel=PARALLEL_UPLOADS, progress=True, delete=False):
    """Upload {relative path: Path} under `uri` (what is new or changed); with `delete`, remove the objects
    under it that are not in `files`. Returns (uploaded count, skipped count, deleted count)."""
    from tqdm import tqdm

    bucket, prefix = split_s3_uri(uri)
    there = existing_objects(s3, bucket, prefix)
    key_of = {rel: f"{prefix}/{rel}" if prefix else rel for rel in files}

    def needs_upload(rel):
        size_etag = there.get(key_of[rel])
        path = files[rel]
        return not (size_etag and size_etag[0] == path.stat().st_size and size_etag[1] == _md5(path).hexdigest())

    todo = [rel for rel in files if needs_upload(rel)]

    def put(rel):
        path = files[rel]
        body = path.read_bytes()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        s3.put_object(Bucket=bucket, Key=key_of[rel], Body=body, ContentMD5=md5)
        return len(body)

    total = sum(files[rel].stat().st_size for rel in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload to {uri}", disable=not progress) as bar:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for size in pool.map(put, todo):
                bar.update(size)
    stale = sorted(set(there) - set(key_of.values())) if delete else []
    for start in range(0, len(stale), DELETE_BATCH):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[start:start + DELETE_BATCH]],
                                                 "Quiet": True})
    return len(todo), len(files) - len(todo), len(stale)
