"""Every request checked against botocore's service model as strictly as the platform checks it: required
members, unknown members, types, enums, string and list lengths, number ranges and patterns (AWS's Java
syntax, `\\p{L}` classes included). botocore itself checks only required and unknown members, types and
minimums, and moto checks less: a field SageMaker would refuse at create passes both.

- `problems(service, operation, params)`: what is wrong with one request (empty: nothing).
- `refuse_invalid(boto_session)`: every request made through the session is checked before it is sent;
  one SageMaker would refuse raises `RequestRefused` instead (the launcher attaches it to every session it
  makes, dry runs included, so `preflight.py`'s dry run stops at the first such request).
- `RequestChecker`: the same check, collecting instead of raising (the tests' witness on every session).
- `fit_to_pattern(value, service, shape)`: a free-form value (a tag value built from an S3 URI) made to
  pass its shape's pattern and maximum length.

AWS writes its patterns for Java's regex engine. Python's `re` reads most of them as they are; the rest are
translated here (`_python_pattern`): the Unicode categories (`\\p{L}`, `\\p{N}`, ...) become ranges built
from `unicodedata` (stdlib: no second regex engine for the launcher to depend on; the table is built once
per process, about 0.3 s, and only when a request has such a pattern), the POSIX classes (`\\p{Alnum}`,
`\\p{Print}`, `\\p{ASCII}`) their ASCII ranges as in Java, UTF-16 surrogate pairs the code points they
stand for, `\\z` Python's `\\Z`. A pattern neither reads is left unchecked (`unreadable_patterns` lists them;
a test keeps those of the launcher's requests at none).
"""
import datetime
import functools
import io
import re
import unicodedata

from . import LauncherError

# botocore's id of the refusing handler: a session it is attached to twice still checks each request once.
REFUSAL_HANDLER_ID = "launcher-request-checks"
# Enums longer than this are named, not listed, in a refusal (TransformInstanceType has hundreds of values).
LISTED_ENUM_VALUES = 12


class RequestRefused(LauncherError):
    """A request the service would refuse, stopped before it was sent."""


@functools.lru_cache(maxsize=None)
def service_model(service):
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def problems(service, operation, params):
    """What SageMaker (or `service`) would refuse in `params` of `operation`, one line each."""
    return problems_in(service_model(service).operation_model(operation), params)


def problems_in(operation_model, params):
    found = []
    if operation_model.input_shape is not None:
        _check(operation_model.input_shape, params, operation_model.name, found)
    return found


def refuse_invalid(boto_session):
    """Check every request of the clients made from `boto_session` before it is sent (botocore's
    `provide-client-params`, after the launcher's own additions, `api_rules.add_to_request`)."""
    boto_session.events.register("provide-client-params", _refuse, unique_id=REFUSAL_HANDLER_ID)


def _refuse(params, model, **_):
    found = problems_in(model, params)
    if found:
        raise RequestRefused(f"{model.service_model.service_name}.{model.name} would be refused, so it was not "
                             f"sent: {'; '.join(found)}")


class RequestChecker:
    """Attached to boto3 sessions: checks every request made through them; `checked` counts them by
    operation, `found` lists the problems as `service.Operation: problem`."""

    def __init__(self):
        self.checked = {}
        self.found = []

    def attach(self, boto_session):
        boto_session.events.register_last("provide-client-params", self._check)

    def _check(self, params, model, **_):
        service = model.service_model.service_name
        self.checked[model.name] = self.checked.get(model.name, 0) + 1
        self.found += [f"{service}.{problem}" for problem in problems_in(model, params)]


def fit_to_pattern(value, service, shape_name, filler="_"):
    """`value` with each character its shape's pattern refuses replaced by `filler`, cut to the shape's
    maximum length. For patterns of the form `([class]*)`, as TagValue's: one character is checked at a time."""
    shape = service_model(service).shape_for(shape_name)
    compiled = _pattern(shape.metadata.get("pattern", ".*"))
    fitted = "".join(ch if compiled is None or compiled.fullmatch(ch) else filler for ch in str(value))
    fitted = fitted[:shape.metadata.get("max")]
    if compiled is not None and not compiled.fullmatch(fitted):
        raise LauncherError(f"{value!r} cannot be made a valid {shape_name}")
    return fitted


# ------------------------------------------------------------------------------------ the model's rules
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
            values = (", ".join(shape.enum) if len(shape.enum) <= LISTED_ENUM_VALUES
                      else f"the {len(shape.enum)} values of {shape.name} in botocore's service model")
            found.append(f"{path}: {value!r} is not one of {values}")
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


# ------------------------------------------------------------------------ Java patterns, read by Python
# Java's POSIX classes are ASCII-only (without UNICODE_CHARACTER_CLASS, which AWS's patterns do not use).
POSIX_CLASSES = {"Alnum": r"a-zA-Z0-9", "Alpha": r"a-zA-Z", "Digit": r"0-9", "Upper": r"A-Z", "Lower": r"a-z",
                 "Punct": r"!-/:-@\[-`{-~", "Graph": r"!-~", "Print": r" -~", "Space": r" \t\n\x0b\f\r",
                 "ASCII": r"\x00-\x7f", "XDigit": r"0-9a-fA-F"}
_CLASS_ESCAPE = re.compile(r"\\([pP])\{(\w+)\}")
_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def _pattern(pattern):
    """The compiled pattern, or None where it cannot be read the way Java reads it."""
    try:
        return re.compile(_python_pattern(pattern))
    except (re.error, ValueError):
        return None


def unreadable_patterns(service, operations):
    """The patterns of the shapes these operations take that `_pattern` cannot read (left unchecked)."""
    model, found, seen = service_model(service), set(), set()

    def walk(shape):
        if shape.name in seen:
            return
        seen.add(shape.name)
        pattern = shape.metadata.get("pattern")
        if pattern and _pattern(pattern) is None:
            found.add(f"{shape.name}: {pattern}")
        children = {"structure": lambda: shape.members.values(), "list": lambda: [shape.member],
                    "map": lambda: [shape.key, shape.value]}.get(shape.type_name, lambda: [])()
        for child in children:
            walk(child)

    for operation in operations:
        input_shape = model.operation_model(operation).input_shape
        if input_shape is not None:
            walk(input_shape)
    return sorted(found)


def _python_pattern(pattern):
    pattern = _SURROGATE_PAIR.sub(lambda m: f"\\U{_code_point(m.group(1), m.group(2)):08x}", pattern)
    pattern = pattern.replace(r"\z", r"\Z").replace("(?<", "(?P<").replace("(?P<=", "(?<=").replace("(?P<!", "(?<!")
    out, in_class, index = [], False, 0
    while index < len(pattern):
        match = _CLASS_ESCAPE.match(pattern, index)
        if match:
            negated, ranges = match.group(1) == "P", _class_ranges(match.group(2))
            if in_class and negated:
                raise ValueError("a negated \\P{..} inside a character class")  # pragma: no mutate - _pattern drops the text
            out.append(ranges if in_class else f"[{'^' if negated else ''}{ranges}]")
            index = match.end()
            continue
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index:index + 2])
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            if pattern[index + 1:index + 2] == "^":  # `[^]...` and `[]...`: a leading `]` is a literal
                out.append("^")
                index += 1
            if pattern[index + 1:index + 2] == "]":
                out.append(r"\]")
                index += 1
        elif char == "[":
            raise ValueError("a nested character class")  # pragma: no mutate - _pattern drops the text
        elif char == "]" and in_class:
            in_class = False  # pragma: no mutate - None reads as False wherever in_class is read
            out.append(char)
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _code_point(high, low):
    return 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)


def _class_ranges(name):
    """The inside of a character class for `\\p{name}`: a POSIX class, or a Unicode general category (`L`, `Lu`)."""
    if name in POSIX_CLASSES:
        return POSIX_CLASSES[name]
    ranges = _category_ranges().get(name)
    if ranges is None:
        raise ValueError(f"\\p{{{name}}}: not a class this translation knows")  # pragma: no mutate - _pattern drops the text
    return "".join(f"\\U{start:08x}-\\U{end:08x}" for start, end in ranges)


@functools.lru_cache(maxsize=None)
def _category_ranges():
    """{category: [(first, last) code points]} for every general category (`Lu`) and its group (`L`)."""
    ranges = {}
    run_start, run_category = 0, unicodedata.category("\0")
    for code in range(1, 0x110001):
        category = unicodedata.category(chr(code)) if code < 0x110000 else None
        if category != run_category:
            for name in (run_category, run_category[0]):
                found = ranges.setdefault(name, [])
                if found and found[-1][1] == run_start - 1:
                    found[-1] = (found[-1][0], code - 1)
                else:
                    found.append((run_start, code - 1))
            run_start, run_category = code, category
    return ranges
