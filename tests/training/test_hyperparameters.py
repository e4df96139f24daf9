"""Hyperparameters: parsing SageMaker's strings, validation messages, the documented table."""
import re
from dataclasses import fields

import pytest

from image_classifier.training.hyperparameters import Hyperparameters, HyperparameterError, markdown_table
from conftest import PROJECT_DIR


def test_defaults_are_the_documented_ones():
    hp = Hyperparameters.from_strings({})
    assert (hp.lr, hp.batch_size, hp.arch, hp.pretrained, hp.image_size) == (0.0026, 64, "resnet50", True, 224)


def test_parses_sagemaker_strings():
    hp = Hyperparameters.from_strings({
        "lr": "0.01", "batch-size": "128", "arch": "resnet18", "pretrained": "False", "amp": "true",
        "trainable-layers": "0", "epochs": "3.0", "optimizer": '"sgd"', "label-smoothing": "0.1"})
    assert hp.lr == 0.01 and hp.batch_size == 128 and hp.arch == "resnet18"
    assert hp.pretrained is False and hp.amp is True and hp.trainable_layers == 0
    assert hp.epochs == 3  # a tuner may send integers as "3.0"
    assert hp.optimizer == "sgd"  # framework estimators JSON-encode strings


def test_platform_keys_are_ignored():
    hp = Hyperparameters.from_strings({"sagemaker_program": "train.py", "_tuning_objective_metric": "valid_acc"})
    assert hp == Hyperparameters()


def test_round_trip_through_strings():
    hp = Hyperparameters(lr=0.5, arch="resnet34", pretrained=False)
    assert Hyperparameters.from_strings(hp.to_strings()) == hp


@pytest.mark.parametrize("raw, message", [
    ({"learning-rate": "0.1"}, r"Unknown hyperparameter 'learning-rate'.*Known: .*\blr\b"),
    ({"batch_size": "32"}, r"Unknown hyperparameter 'batch_size'\. Did you mean 'batch-size'\?"),
    ({"lr": "fast"}, r"'lr' = 'fast' is not valid: expected a number from 1e-07 to 10.0"),
    ({"lr": "-1"}, r"'lr' = '-1' is out of range"),
    ({"lr": "nan"}, r"'lr' = 'nan' is not valid"),
    ({"batch-size": "0"}, r"'batch-size' = '0' is out of range: expected an integer from 1 to 4096"),
    ({"batch-size": "12.5"}, r"'batch-size' = '12.5' is not valid: expected an integer"),
    ({"arch": "vgg16"}, r"'arch' = 'vgg16' is not allowed: expected one of resnet18, resnet34, resnet50"),
    ({"pretrained": "yes"}, r"'pretrained' = 'yes' is not valid: expected true or false"),
    ({"trainable-layers": "5"}, r"'trainable-layers' = '5' is out of range: expected an integer from 0 to 4"),
    ({"on-bad-image": "ignore"}, r"'on-bad-image' = 'ignore' is not allowed: expected one of skip, fail"),
    ({"epoch": "3"}, r"Unknown hyperparameter 'epoch'\. Did you mean 'epochs'\?"),
    ({"image_sise": "3"}, r"Unknown hyperparameter 'image_sise'\. Did you mean 'image-size'\?"),
    ({"preset": "My Preset"}, r"'preset' = 'My Preset' is not valid: expected a name"),
    ({"momentum": "0.5"}, r"^Contradictory hyperparameters: momentum=0.5 applies to optimizer=sgd only"),
    ({"profile-steps": "3"}, r"^Contradictory hyperparameters: profile-start-step and profile-steps need profile=true"),
])
def test_bad_values_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(HyperparameterError, match=message):
        Hyperparameters.from_strings(raw)


def test_every_hyperparameter_is_documented_and_typed():
    for spec in fields(Hyperparameters):
        assert spec.metadata["help"], spec.name
        assert spec.type in (int, float, str, bool), spec.name
        if spec.type in (int, float):
            assert spec.metadata["min"] <= spec.default <= spec.metadata["max"], spec.name
        if spec.type is str and spec.metadata["choices"]:
            assert spec.default in spec.metadata["choices"], spec.name


def test_the_documented_table_is_generated_from_the_dataclass():
    page = (PROJECT_DIR / "docs" / "TRAINING.md").read_text()
    block = re.search(r"<!-- hyperparameters:begin -->\n(.*?)\n<!-- hyperparameters:end -->", page, re.S)
    assert block, "docs/TRAINING.md lacks the generated hyperparameter table markers"
    assert block.group(1).strip() == markdown_table(), \
        "docs/TRAINING.md's table is stale: paste the output of `python -m image_classifier.training.hyperparameters`"


@pytest.mark.parametrize("key", ["_note", "_tuning_objective_metricx", "_"])
def test_unknown_underscore_keys_are_refused_naming_them(key):
    with pytest.raises(HyperparameterError, match=f"^Unknown hyperparameter '{key}'"):
        Hyperparameters.from_strings({key: "$(touch x)"})


def test_a_key_that_is_not_plain_text_is_quoted_in_the_error():
    with pytest.raises(HyperparameterError) as refused:
        Hyperparameters.from_strings({"_x\ntest_acc=0.999": "1"})
    assert "\n" not in str(refused.value) and "test_acc=" not in str(refused.value)


def test_pretrained_false_trains_every_layer_unless_trainable_layers_is_set():
    """A random network with frozen stages trains to chance: without ImageNet weights, every stage trains."""
    import torchvision

    from image_classifier.model import build_model, set_trainable

    assert Hyperparameters.from_strings({}).trainable_layers == 1  # fine-tuning: the last stage and the head
    scratch = Hyperparameters.from_strings({"pretrained": "false", "arch": "resnet18"})
    assert scratch.trainable_layers == 4
    model = build_model("resnet18", 3)
    set_trainable(model, scratch.trainable_layers, scratch.arch)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert len(list(model.parameters())) == len(list(torchvision.models.resnet18().parameters()))
    # The user's own value stands.
    assert Hyperparameters.from_strings({"pretrained": "false", "trainable-layers": "0"}).trainable_layers == 0
    assert Hyperparameters.from_strings({"momentum": "0.5", "optimizer": "sgd"}).momentum == 0.5


def test_booleans_read_one_and_zero_and_strings_may_be_json_encoded():
    hp = Hyperparameters.from_strings({"pretrained": "1", "amp": "0", "preset": '""', "arch": '"resnet18"'})
    assert (hp.pretrained, hp.amp, hp.preset, hp.arch) == (True, False, "", "resnet18")
    assert Hyperparameters.from_strings({"pretrained": "0", "amp": "1"}).amp is True
    with pytest.raises(HyperparameterError, match="expected a name"):
        Hyperparameters.from_strings({"preset": '"'})  # one quote is no JSON string: kept, and refused
    with pytest.raises(HyperparameterError, match="expected true or false"):
        Hyperparameters.from_strings({"amp": "2"})


def test_both_ends_of_a_range_are_allowed():
    hp = Hyperparameters.from_strings({"epochs": "1000", "batch-size": "1", "lr": "10.0", "momentum": "0.0",
                                       "optimizer": "sgd"})
    assert (hp.epochs, hp.batch_size, hp.lr, hp.momentum) == (1000, 1, 10.0, 0.0)
    with pytest.raises(HyperparameterError, match="'epochs' = '1001' is out of range"):
        Hyperparameters.from_strings({"epochs": "1001"})


def test_refusals_word_for_word():
    with pytest.raises(HyperparameterError) as refused:
        Hyperparameters.from_strings({"zzz": "1"})
    assert str(refused.value).startswith("Unknown hyperparameter 'zzz'. Known: ")  # no close key: no hint
    with pytest.raises(HyperparameterError) as refused:
        Hyperparameters.from_strings({"bad\nkey": "1"})
    assert str(refused.value).startswith("Unknown hyperparameter \"bad\\nkey\".")  # quoted: a key is data too
    with pytest.raises(HyperparameterError) as refused:
        Hyperparameters.from_strings({"optimizer": "adam", "momentum": "0.5", "profile-steps": "3"})
    assert str(refused.value) == (
        "Contradictory hyperparameters: momentum=0.5 applies to optimizer=sgd only (optimizer=adam): drop momentum "
        "or set optimizer=sgd; profile-start-step and profile-steps need profile=true: add it, or drop them.")


def test_a_platform_key_does_not_hide_the_keys_after_it():
    assert Hyperparameters.from_strings({"sagemaker_program": "train.py", "epochs": "7"}).epochs == 7
