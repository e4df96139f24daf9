"""Copy a local dataset folder to S3, skipping files already there with the same size and MD5.

The layout in S3 is the folder's own (`train/<class>/<picture>`, `valid/...`, `test/...`), so the training
job's channels are `<uri>/train`, `<uri>/valid`, `<uri>/test`. Objects are written with `PutObject` and a
`Content-MD5` (S3 checks it on arrival), so their ETag is the MD5 and a second upload can compare it.
"""
import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import LauncherError

SPLITS = ("train", "valid", "test")
PARALLEL_UPLOADS = 8


def split_s3_uri(uri):
    if not uri.startswith("s3://") or not uri[5:].split("/")[0]:
        raise LauncherError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


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
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item["Size"], item["ETag"].strip('"'))
    return found


def upload(s3, root, uri, parallel=PARALLEL_UPLOADS, progress=True):
    """Sync `root` to `uri`; returns (splits, uploaded count, skipped count)."""
    from tqdm import tqdm

    bucket, prefix = split_s3_uri(uri)
    splits, files = dataset_files(root)
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
    return splits, len(todo), len(files) - len(todo)
