"""launcher/request_checks.py: AWS's Java patterns read as Java reads them (\\p{..} classes, POSIX classes,
surrogate pairs), tag values made to fit, and the tables the launcher offers checked against botocore's model."""
import pytest

from launcher import aws, transform
from launcher.request_checks import fit_to_pattern, problems, service_model, unreadable_patterns

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
