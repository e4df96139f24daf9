"""launcher/request_checks.py: AWS's Java patterns read as Java reads them (\\p{..} classes, POSIX classes,
surrogate pairs), tag values made to fit, and the tables the launcher offers checked against botocore's model."""
import datetime
import io
import unicodedata

import boto3
import pytest
from botocore.exceptions import ParamValidationError
from botocore.model import ServiceModel
from botocore.stub import Stubber

from launcher import LauncherError, aws, request_checks, transform
from launcher.request_checks import fit_to_pattern, problems, problems_in, service_model, unreadable_patterns

TAG_VALUE = "([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)"  # botocore's sagemaker TagValue, as of 2026-12-06


def add_tag(value):
    return {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m1", "Tags": [{"Key": "k", "Value": value}]}


def test_the_tag_value_pattern_is_the_one_these_tests_read():
    assert service_model("sagemaker").shape_for("TagValue").metadata == {"min": 0, "max": 256, "pattern": TAG_VALUE}


@pytest.mark.parametrize("value", ["s3://b/image-classifier/data/dogImages (v2)", "a,b", "run#3", "tab\there"])
def test_unicode_class_patterns_refuse_what_sagemaker_refuses(value):
    assert problems("sagemaker", "AddTags", add_tag(value)) == [
        f"AddTags.Tags[0].Value: {value!r} does not match {TAG_VALUE}"]


@pytest.mark.parametrize("value", ["s3://b/data/dogImages v2", "s3://b/Épagneul_日本語_٣", "k=v+w@x-y", ""])
def test_unicode_class_patterns_accept_letters_spaces_and_digits_of_any_script(value):
    assert problems("sagemaker", "AddTags", add_tag(value)) == []


def test_java_posix_classes_are_ascii_and_surrogate_pairs_are_code_points():
    header = {"EndpointName": "e1", "Body": b"x", "CustomAttributes": "top_k=3"}
    assert problems("sagemaker-runtime", "InvokeEndpoint", header) == []
    assert problems("sagemaker-runtime", "InvokeEndpoint", {**header, "CustomAttributes": "top_k=é"})  # \p{ASCII}
    target = {"ServiceNamespace": "sagemaker", "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert problems("application-autoscaling", "DescribeScalableTargets",  # [\u0020-..\uD800\uDC00-\uDBFF\uDFFF]
                    {**target, "ResourceIds": ["endpoint/e1/variant/AllTraffic 😀"]}) == []
    assert problems("application-autoscaling", "DescribeScalableTargets", {**target, "ResourceIds": ["a\x01"]})


def test_every_pattern_of_the_launchers_requests_is_read():
    operations = {"sagemaker": ["CreateTrainingJob", "CreateHyperParameterTuningJob", "CreateModel",
                                "CreateEndpointConfig", "CreateEndpoint", "CreateTransformJob", "AddTags"],
                  "application-autoscaling": ["RegisterScalableTarget", "PutScalingPolicy"],
                  "sagemaker-runtime": ["InvokeEndpoint"], "s3": ["PutObject", "ListObjectsV2"], "sts": []}
    for service, names in operations.items():
        assert unreadable_patterns(service, names) == [], service


def test_tag_values_are_made_to_fit_the_pattern_and_length():
    assert fit_to_pattern("s3://b/dogImages (v2),#1", "sagemaker", "TagValue") == "s3://b/dogImages _v2___1"
    long = "s3://b/" + "x" * 300
    assert fit_to_pattern(long, "sagemaker", "TagValue") == long[:256]
    links = aws.tags(data="s3://b/image-classifier/data/dogImages (v2)", tuning_job=None)
    assert links[1] == {"Key": "image-classifier:data", "Value": "s3://b/image-classifier/data/dogImages _v2_"}
    assert len(links) == 2


def test_the_transform_instance_table_offers_only_types_createtransformjob_takes():
    allowed = service_model("sagemaker").shape_for("TransformInstanceType").enum
    assert sorted(set(transform.INSTANCE_RESOURCES) - set(allowed)) == []
    assert transform.TRANSFORM_INSTANCE in transform.INSTANCE_RESOURCES


@pytest.mark.parametrize("max_results, refused", [(0, True), (1, False), (100, False), (101, True), (10**6, True)])
def test_numbers_are_checked_against_both_ends_of_their_range(max_results, refused):
    """ListTrainingJobs' MaxResults is 1..100 in botocore's model: above the maximum is refused like below
    the minimum (botocore itself checks the minimum only)."""
    assert service_model("sagemaker").shape_for("MaxResults").metadata == {"min": 1, "max": 100}
    found = problems("sagemaker", "ListTrainingJobs", {"MaxResults": max_results})
    assert found == ([f"ListTrainingJobs.MaxResults: {max_results} is outside 1..100"] if refused else [])


@pytest.mark.parametrize("tags, refused", [(0, False), (50, False), (51, True)])
def test_list_lengths_are_checked_against_their_maximum(tags, refused):
    found = problems("sagemaker", "AddTags", {**add_tag("v"), "Tags": [{"Key": f"k{i}", "Value": "v"}
                                                                       for i in range(tags)]})
    assert found == (["AddTags.Tags: 51 items, allowed 0..50"] if refused else [])


# ------------------------------------------------------------------- every rule, on a model of our own
FAKE = ServiceModel({
    "metadata": {"protocol": "json", "serviceId": "Fake", "endpointPrefix": "fake"},
    "operations": {"Put": {"name": "Put", "input": {"shape": "Input"}}, "Ping": {"name": "Ping"},
                   "Odd": {"name": "Odd", "input": {"shape": "OddInput"}}},
    "shapes": dict(
        Input={"type": "structure", "required": ["Name"], "members": {
            "Name": {"shape": "Name"}, "Count": {"shape": "Count"}, "Big": {"shape": "Big"},
            "Ratio": {"shape": "Ratio"}, "Weight": {"shape": "Weight"}, "Flag": {"shape": "Flag"},
            "Data": {"shape": "Data"}, "When": {"shape": "When"}, "Items": {"shape": "Items"},
            "Labels": {"shape": "Labels"}, "Mode": {"shape": "Mode"}, "Size": {"shape": "Size"},
            "Kind": {"shape": "Kind"}, "Long": {"shape": "Long"}, "Free": {"shape": "Free"},
            "Child": {"shape": "Input"}}},
        Name={"type": "string", "min": 2, "max": 5, "pattern": "[a-z]*"},
        Count={"type": "integer", "min": 1, "max": 10}, Big={"type": "long", "min": 0},
        Ratio={"type": "float", "max": 1.5}, Weight={"type": "double"}, Flag={"type": "boolean"},
        Data={"type": "blob"}, When={"type": "timestamp"},
        Items={"type": "list", "member": {"shape": "Name"}, "min": 1, "max": 2},
        Labels={"type": "map", "key": {"shape": "Name"}, "value": {"shape": "Count"}, "max": 2},
        Mode={"type": "string", "enum": ["on", "off"]},
        Size={"type": "string", "enum": [f"s{i}" for i in range(12)]},
        Kind={"type": "string", "enum": [f"k{i}" for i in range(13)]},
        Long={"type": "string", "min": 3}, Free={"type": "string"},
        # Shapes whose pattern Python cannot read as Java does (a nested class), reached every way a shape is
        OddInput={"type": "structure", "members": {"A": {"shape": "OddA"}, "List": {"shape": "OddList"},
                                                   "Map": {"shape": "OddMap"}, "Again": {"shape": "OddA"}}},
        OddA={"type": "string", "pattern": "[a[b]]"}, OddB={"type": "string", "pattern": "[b[c]]"},
        OddC={"type": "string", "pattern": "[c[d]]"}, OddD={"type": "string", "pattern": "[d[e]]"},
        OddList={"type": "list", "member": {"shape": "OddB"}},
        OddMap={"type": "map", "key": {"shape": "OddC"}, "value": {"shape": "OddD"}},
        # fit_to_pattern's shapes
        Tag={"type": "string", "max": 5, "pattern": "([a-z_]*)"}, Short={"type": "string", "max": 3},
        Pair={"type": "string", "pattern": "[a-z]{2}"}),
}, "fake")


def put(**members):
    return problems_in(FAKE.operation_model("Put"), {"Name": "ab", **members})


@pytest.mark.parametrize("params, found", [
    ({"Name": "ab"}, []),
    ({}, ["Put.Name: required, missing"]),
    ({"Name": "ab", "Bogus": 1}, ["Put.Bogus: not a member of Input"]),
    ({"Name": "ab", "Count": None}, []),  # a member given as None is left out of the request
    ({"Name": "ab", "Child": {"Count": 3}}, ["Put.Child.Name: required, missing"]),
    ({"Name": "ab", "Child": "x"}, ["Put.Child: expected a structure, got str"]),
    (["Name"], ["Put: expected a structure, got list"]),
])
def test_structures_required_and_unknown_members(params, found):
    assert problems_in(FAKE.operation_model("Put"), params) == found


def test_an_operation_without_input_takes_anything():
    assert problems_in(FAKE.operation_model("Ping"), {"Whatever": 1}) == []


@pytest.mark.parametrize("member, value, found", [
    ("Items", ["ab"], []), ("Items", ("ab", "cd"), []),
    ("Items", "ab", ["Put.Items: expected a list, got str"]),
    ("Items", [], ["Put.Items: 0 items, allowed 1..2"]),
    ("Items", ["ab", "cd", "ef"], ["Put.Items: 3 items, allowed 1..2"]),
    ("Items", ["ab", "A"], ["Put.Items[1]: 1 characters, allowed 2..5", "Put.Items[1]: 'A' does not match [a-z]*"]),
    ("Labels", {}, []), ("Labels", {"ab": 1, "cd": 10}, []),
    ("Labels", [("ab", 1)], ["Put.Labels: expected a map, got list"]),
    ("Labels", {"ab": 1, "cd": 2, "ef": 3}, ["Put.Labels: 3 entries, allowed 0..2"]),
    ("Labels", {"aB": 1}, ["Put.Labels key 'aB': 'aB' does not match [a-z]*"]),
    ("Labels", {"ab": 0}, ["Put.Labels['ab']: 0 is outside 1..10"]),
])
def test_lists_and_maps_their_lengths_and_their_items(member, value, found):
    assert put(**{member: value}) == found


@pytest.mark.parametrize("member, value, found", [
    ("Name", "abcde", []), ("Name", 12, ["Put.Name: expected a string, got int"]),
    ("Name", "a", ["Put.Name: 1 characters, allowed 2..5"]),
    ("Name", "abcdef", ["Put.Name: 6 characters, allowed 2..5"]),
    ("Name", "a-b", ["Put.Name: 'a-b' does not match [a-z]*"]),
    ("Long", "abc", []), ("Long", "ab", ["Put.Long: 2 characters, allowed 3..any"]),
    ("Free", "", []), ("Free", "x" * 10_000, []),
    ("Mode", "off", []), ("Mode", "On", ["Put.Mode: 'On' is not one of on, off"]),
    ("Size", "s11", []), ("Size", "s12", [f"Put.Size: 's12' is not one of {', '.join(f's{i}' for i in range(12))}"]),
    ("Kind", "k12", []),
    ("Kind", "k13", ["Put.Kind: 'k13' is not one of the 13 values of Kind in botocore's service model"]),
])
def test_strings_enums_lengths_and_patterns(member, value, found):
    assert put(**{member: value}) == found


@pytest.mark.parametrize("member, value, found", [
    ("Count", 1, []), ("Count", 10, []),
    ("Count", 0, ["Put.Count: 0 is outside 1..10"]), ("Count", 11, ["Put.Count: 11 is outside 1..10"]),
    ("Count", 2.0, ["Put.Count: expected integer, got 2.0"]), ("Count", True, ["Put.Count: expected integer, got True"]),
    ("Count", "3", ["Put.Count: expected integer, got '3'"]),
    ("Big", 0, []), ("Big", 10**12, []), ("Big", -1, ["Put.Big: -1 is outside 0..None"]),
    ("Big", 1.0, ["Put.Big: expected long, got 1.0"]),
    ("Ratio", 1.5, []), ("Ratio", 1, []), ("Ratio", -1e9, []),
    ("Ratio", 1.6, ["Put.Ratio: 1.6 is outside None..1.5"]), ("Ratio", "1", ["Put.Ratio: expected float, got '1'"]),
    ("Weight", -2.5, []), ("Weight", 7, []), ("Weight", False, ["Put.Weight: expected double, got False"]),
    ("Flag", False, []), ("Flag", 1, ["Put.Flag: expected a boolean, got 1"]),
    ("Flag", "true", ["Put.Flag: expected a boolean, got 'true'"]),
])
def test_numbers_and_booleans(member, value, found):
    assert put(**{member: value}) == found


class Reader:
    def read(self, size=-1):
        return b""


@pytest.mark.parametrize("member, value, found", [
    ("Data", b"x", []), ("Data", bytearray(b"x"), []), ("Data", "x", []), ("Data", io.BytesIO(b"x"), []),
    ("Data", Reader(), []), ("Data", 5, ["Put.Data: expected bytes or a file, got int"]),
    ("When", datetime.datetime(2026, 12, 7), []), ("When", datetime.date(2026, 12, 7), []),
    ("When", "2026-12-07T00:00:00Z", []), ("When", 1_800_000_000, []), ("When", 1.8e9, []),
    ("When", [2026], ["Put.When: expected a timestamp, got [2026]"]),
])
def test_blobs_and_timestamps(member, value, found):
    assert put(**{member: value}) == found


@pytest.fixture
def fake_service(monkeypatch):
    real = request_checks.service_model
    monkeypatch.setattr(request_checks, "service_model", lambda service: FAKE if service == "fake" else real(service))


def test_unreadable_patterns_are_found_wherever_a_shape_is_reached(fake_service):
    assert unreadable_patterns("fake", ["Put", "Ping", "Odd"]) == [
        "OddA: [a[b]]", "OddB: [b[c]]", "OddC: [c[d]]", "OddD: [d[e]]"]
    assert unreadable_patterns("fake", ["Put", "Ping"]) == []  # Input holds itself: each shape is walked once
    assert put(Child={"Name": "ab"}) == []


def test_an_unreadable_pattern_is_left_unchecked(fake_service):
    assert problems_in(FAKE.operation_model("Odd"), {"A": "anything", "List": ["at", "all"]}) == []


@pytest.mark.parametrize("value, filler, fitted", [
    ("ab_c", "_", "ab_c"), ("aB c", "_", "a__c"), ("aB c", "z", "azzc"), ("abcdefgh", "_", "abcde"), (42, "x", "xx"),
])
def test_a_value_is_fitted_character_by_character_then_cut(fake_service, value, filler, fitted):
    assert fit_to_pattern(value, "fake", "Tag", filler) == fitted


def test_fitting_without_a_pattern_only_cuts_and_an_unreadable_pattern_keeps_the_value(fake_service):
    assert fit_to_pattern("é b|c", "fake", "Short") == "é b"
    assert fit_to_pattern("x" * 300, "fake", "Free") == "x" * 300
    assert fit_to_pattern("[z] ?", "fake", "OddA") == "[z] ?"


def test_a_value_that_cannot_fit_is_refused(fake_service):
    with pytest.raises(LauncherError) as refused:
        fit_to_pattern("ab", "fake", "Pair")
    assert str(refused.value) == "'ab' cannot be made a valid Pair"
    with pytest.raises(LauncherError, match="cannot be made a valid Tag"):
        fit_to_pattern("a-b", "fake", "Tag", filler="-")  # the filler itself does not fit


# ---------------------------------------------------------------- Java's patterns, as Python reads them
java = request_checks._pattern.__wrapped__  # the translation itself, past the per-process cache


def matches(pattern, text):
    compiled = java(pattern)
    assert compiled is not None, pattern
    return compiled.fullmatch(text) is not None


# Code points of every general category: ASCII, Latin-1, Greek, Arabic digits, CJK, an emoji, the last plane's end
SAMPLE = [chr(code) for code in (*range(0, 0x250), *range(0x370, 0x400, 3), *range(0x660, 0x66a), 0x3000,
                                 0x3042, 0x4E00, 0xFF10, 0x1F600, 0x20000, 0xE0001, 0x10FFFD, 0x10FFFF)]


@pytest.mark.parametrize("name", ["L", "Lu", "Ll", "N", "Nd", "Z", "Zs", "P", "Sc", "So", "Cc", "Co"])
def test_unicode_classes_hold_exactly_their_categories(name):
    """\\p{Sc} has single code points ($) next to ranges; \\P{..} outside a class is the complement."""
    inside, outside = java(f"\\p{{{name}}}"), java(f"\\P{{{name}}}")
    for char in SAMPLE:
        expected = unicodedata.category(char).startswith(name)
        assert (inside.fullmatch(char) is not None, outside.fullmatch(char) is not None) == \
            (expected, not expected), (name, hex(ord(char)))


@pytest.mark.parametrize("pattern, accepted, refused", [
    ("\\p{Alnum}+", ["aZ09"], ["_", "é", "٣"]),  # POSIX classes are ASCII, as in Java
    ("\\p{ASCII}*", ["\x00~\x7f"], ["\x80", "é"]),
    ("[\\p{Upper}\\p{Digit}]+", ["A1Z"], ["a", "É"]),
    ("[_\\p{Lu}]+", ["_AÉ"], ["a", "-"]),  # a Unicode class inside a class: its ranges
    ("x\\p{N}", ["x3", "x٣"], ["xa"]),
    ("[a]\\p{Lu}", ["aB"], ["a", "ab"]),  # a class closed, then a class escape outside it
    ("[a][b]", ["ab"], ["a", "ba"]),
    ("\\[a\\]", ["[a]"], ["a"]),  # escaped brackets open no class
    ("[a\\]]+", ["a]"], ["["]),
    ("\\\\p{L}", ["\\p{L}"], ["a"]),  # an escaped backslash, then plain text
    ("[^a]", ["b", "]"], ["a"]),
    ("[]\\p{Ll}]", ["]", "a"], ["A", "X", "\\"]),  # a leading ] is a literal
    ("[^]\\p{Ll}]", ["A", "-", "^"], ["]", "a"]),
    ("[^\\p{Lu}]", ["a", "1", "^"], ["A", "É"]),
    ("x[^]a]", ["xb", "x^"], ["x]", "xa"]), ("x[]a]", ["x]", "xa"], ["xb"]),  # a class that does not start the pattern
    ("ab\\z", ["ab"], ["abc"]),  # \z: the end of the input
    ("(?<word>a+)b", ["aab"], ["b"]),  # a named group, as Python spells it
    ("a(?<=a)b", ["ab"], ["b"]), ("a(?<!x)b", ["ab"], ["xb"]),  # lookbehinds are not groups
])
def test_java_syntax_is_read_as_java_reads_it(pattern, accepted, refused):
    for text in accepted:
        assert matches(pattern, text), (pattern, text)
    for text in refused:
        assert not matches(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern, char", [
    ("\\uD800\\uDC00", "\U00010000"), ("\\uD83D\\uDE00", "\U0001F600"), ("\\ud801\\udc37", "\U00010437"),
    ("\\uDBFF\\uDFFF", "\U0010FFFF"), ("\\uDB40\\uDC01", "\U000E0001"), ("\\uD840\\uDC00", "\U00020000"),
])
def test_a_surrogate_pair_is_the_code_point_it_stands_for(pattern, char):
    assert matches(pattern, char)
    for other in (chr(ord(char) - 1), chr(ord(char) + 1) if ord(char) < 0x10FFFF else "a", "X", "\\"):
        assert not matches(pattern, other), (pattern, hex(ord(other)))
    assert matches(f"[\\u0020-\\uD7FF{pattern}-\\uDBFF\\uDFFF]+", f"a {char}\U0010FFFF")


@pytest.mark.parametrize("pattern", [
    "[a[b]]",  # a nested class (a union in Java)
    "[a\\P{L}]",  # a negated Unicode class inside a class
    "\\p{IsLatin}", "[\\p{InGreek}]",  # script and block classes: not translated
    "(",
])
def test_a_pattern_java_and_python_read_differently_is_unreadable(pattern):
    assert java(pattern) is None


# -------------------------------------------------------------------- the session's request checks
def stubbed_client(boto_session, responses):
    client = boto_session.client("sagemaker")
    stubber = Stubber(client)
    for _ in range(responses):
        stubber.add_response("list_training_jobs", {"TrainingJobSummaries": []})
    stubber.activate()
    return client


def fresh_session():
    return boto3.Session(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def test_a_refused_request_is_never_sent(monkeypatch):
    boto_session, checked = fresh_session(), []
    check = request_checks.problems_in
    monkeypatch.setattr(request_checks, "problems_in", lambda model, params: checked.append(model.name) or check(model, params))
    request_checks.refuse_invalid(boto_session)
    request_checks.refuse_invalid(boto_session)  # attached twice, checks once
    client = stubbed_client(boto_session, responses=1)
    with pytest.raises(request_checks.RequestRefused) as refused:
        client.list_training_jobs(MaxResults=101, StatusEquals="Done")
    assert str(refused.value) == (
        "sagemaker.ListTrainingJobs would be refused, so it was not sent: ListTrainingJobs.MaxResults: 101 is "
        "outside 1..100; ListTrainingJobs.StatusEquals: 'Done' is not one of InProgress, Completed, Failed, "
        "Stopping, Stopped, Deleting")
    assert client.list_training_jobs(MaxResults=100) == {"TrainingJobSummaries": []}  # the stubbed answer
    assert checked == ["ListTrainingJobs", "ListTrainingJobs"]


def test_the_checker_counts_every_request_and_collects_its_problems():
    boto_session, checker = fresh_session(), request_checks.RequestChecker()
    assert (checker.checked, checker.found) == ({}, [])
    checker.attach(boto_session)
    client = stubbed_client(boto_session, responses=3)
    client.list_training_jobs(MaxResults=5)
    client.list_training_jobs(MaxResults=101)
    with pytest.raises(ParamValidationError):  # botocore's own check of the minimum, after this one
        client.list_training_jobs(MaxResults=0)
    assert checker.checked == {"ListTrainingJobs": 3}
    assert checker.found == ["sagemaker.ListTrainingJobs.MaxResults: 101 is outside 1..100",
                             "sagemaker.ListTrainingJobs.MaxResults: 0 is outside 1..100"]
