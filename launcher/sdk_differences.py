"""What the SDK v3 backend (sdk_v3.py) sends differently from the v2 backend (sdk_v2.py): the one table of it.

Every request of every command is the same on both SDKs, field by field, except what this table lists, each
with its reason. tests/launcher/test_sdk_requests.py records the requests of each command on both (moto server
and --dry-run) and fails on any difference not listed here. No SDK is imported here: the comparison runs under
either.
"""
import fnmatch

# (operations (a glob), field (a dotted path; `*` is any one key or list index), how it differs, why)
# How: "unordered" (a list compared as a multiset), "empty is absent" (one SDK sends [] or {} where the other
# sends nothing).
REQUEST_DIFFERENCES = [
    ("CreateTrainingJob", "DebugHookConfig.CollectionConfigurations", "unordered",
     "v2 sends the collections in a set's order, which changes from run to run; v3 sorts them by name"),
    ("CreateHyperParameterTuningJob", "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges",
     "empty is absent", "v2 sends an empty list (we tune no integer); sagemaker-core's serializer leaves empty "
                        "members out; SageMaker reads both alike"),
]


def _rules(operation, how):
    return [(field, why) for glob, field, kind, why in REQUEST_DIFFERENCES
            if kind == how and fnmatch.fnmatchcase(operation, glob)]


def _matches(path, pattern):
    parts, wanted = path.split("."), pattern.split(".") if pattern else []
    return len(parts) == len(wanted) and all(w == "*" or w == p for p, w in zip(parts, wanted))


def _canonical(value):
    import json

    return json.dumps(value, sort_keys=True)


def _empty(value):
    return value in ({}, [], None)


def unexplained(operation, v2, v3, path=""):
    """The differences between one request as v2 and as v3 sent it that the table does not explain."""
    found = []
    if isinstance(v2, dict) and isinstance(v3, dict):
        for key in sorted(set(v2) | set(v3)):
            field = f"{path}.{key}".lstrip(".")
            if key not in v2 or key not in v3:
                value = v2.get(key, v3.get(key))
                if _empty(value) and any(_matches(field, f) for f, _ in _rules(operation, "empty is absent")):
                    continue
                found.append(f"{operation}.{field}: " + (f"v2 only: {value!r}" if key in v2 else f"v3 only: {value!r}"))
                continue
            found += unexplained(operation, v2[key], v3[key], field)
        return found
    if isinstance(v2, list) and isinstance(v3, list):
        if any(_matches(path, f) for f, _ in _rules(operation, "unordered")):
            v2, v3 = sorted(v2, key=_canonical), sorted(v3, key=_canonical)
        if len(v2) != len(v3):
            return [f"{operation}.{path}: {len(v2)} item(s) on v2, {len(v3)} on v3"]
        for index, (a, b) in enumerate(zip(v2, v3)):
            found += unexplained(operation, a, b, f"{path}.{index}")
        return found
    return [] if v2 == v3 else [f"{operation}.{path}: v2 {v2!r}, v3 {v3!r}"]


def unexplained_in(v2_calls, v3_calls):
    """Every unexplained difference between two commands' requests ([(operation, params)] each, in order)."""
    v2_operations, v3_operations = [o for o, _ in v2_calls], [o for o, _ in v3_calls]
    if v2_operations != v3_operations:
        return [f"operations differ: v2 {v2_operations}, v3 {v3_operations}"]
    return [d for (operation, a), (_, b) in zip(v2_calls, v3_calls) for d in unexplained(operation, a, b)]
