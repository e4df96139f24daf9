"""Every request the launcher sends, checked against botocore's service model as strictly as the platform
checks it: required members, unknown members, types, enums, string and list lengths, number ranges and
(where Python's `re` reads them) patterns. botocore itself checks only required and unknown members, types
and minimums, and moto checks less: a field SageMaker would refuse at create passes both.

`problems(service, operation, params)` lists what is wrong with one request (empty: nothing).
`RequestChecker` collects them for every call made through a boto3 session (its `provide-client-params`
event, the one the launcher's dry run records).
"""
import datetime
import functools
import io
import re

import botocore.session


@functools.lru_cache(maxsize=None)
def service_model(service):
    return botocore.session.get_session().get_service_model(service)


@functools.lru_cache(maxsize=None)
def _pattern(pattern):
    """The compiled pattern, or None where Python's `re` cannot read AWS's (Java) syntax the same way."""
    if re.search(r"\\p\{|\\P\{|\(\?<[a-zA-Z]|\\[zZ]", pattern):
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


def problems(service, operation, params):
    model = service_model(service).operation_model(operation)
    found = []
    if model.input_shape is not None:
        _check(model.input_shape, params, operation, found)
    return found


def _check(shape, value, path, found):
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return found.append(f"{path}: expected a structure, got {type(value).__name__}")
        for name in shape.required_members:
            if name not in value:
                found.append(f"{path}.{name}: required, missing")
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{path}.{name}: not a member of {shape.name}")
            elif member is not None:
                _check(shape.members[name], member, f"{path}.{name}", found)
        return
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            return found.append(f"{path}: expected a list, got {type(value).__name__}")
        _length(shape, len(value), path, found, "items")
        for index, item in enumerate(value):
            _check(shape.member, item, f"{path}[{index}]", found)
        return
    if kind == "map":
        if not isinstance(value, dict):
            return found.append(f"{path}: expected a map, got {type(value).__name__}")
        _length(shape, len(value), path, found, "entries")
        for key, item in value.items():
            _check(shape.key, key, f"{path} key {key!r}", found)
            _check(shape.value, item, f"{path}[{key!r}]", found)
        return
    if kind == "string":
        if not isinstance(value, str):
            return found.append(f"{path}: expected a string, got {type(value).__name__}")
        if shape.enum and value not in shape.enum:
            found.append(f"{path}: {value!r} is not one of {', '.join(shape.enum)}")
        _length(shape, len(value), path, found, "characters")
        pattern = shape.metadata.get("pattern")
        compiled = _pattern(pattern) if pattern else None
        if compiled is not None and not compiled.fullmatch(value):
            found.append(f"{path}: {value!r} does not match {pattern}")
        return
    if kind in ("integer", "long", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind in ("integer", "long") and not isinstance(value, int)):
            return found.append(f"{path}: expected {kind}, got {value!r}")
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and value < low or high is not None and value > high:
            found.append(f"{path}: {value} is outside {low}..{high}")
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            found.append(f"{path}: expected a boolean, got {value!r}")
        return
    if kind == "blob":
        if not isinstance(value, (bytes, bytearray, str, io.IOBase)) and not hasattr(value, "read"):
            found.append(f"{path}: expected bytes or a file, got {type(value).__name__}")
        return
    if kind == "timestamp":
        if not isinstance(value, (datetime.datetime, datetime.date, str, int, float)):
            found.append(f"{path}: expected a timestamp, got {value!r}")


def _length(shape, length, path, found, unit):
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and length < low or high is not None and length > high:
        found.append(f"{path}: {length} {unit}, allowed {low if low is not None else 0}..{high or 'any'}")


class RequestChecker:
    """Attached to boto3 sessions: checks every request made through them; `checked` counts them by
    operation, `found` lists the problems as `service.Operation: problem`."""

    def __init__(self):
        self.checked = {}
        self.found = []

    def attach(self, boto_session):
        boto_session.events.register("provide-client-params", self._check)

    def _check(self, params, model, **_):
        service = model.service_model.service_name
        self.checked[model.name] = self.checked.get(model.name, 0) + 1
        self.found += [f"{service}.{problem}" for problem in problems(service, model.name, params)]
