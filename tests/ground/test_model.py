"""The network, pretrained weights and the artifact (model.pth + model.json)."""
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision

from image_classifier.contract import atomic_write
from image_classifier.model import (ArtifactError, ModelConfig, PretrainedWeightsError, build_model, load_artifact,
                                    family, pretrained_state, save_artifact, set_trainable)


def test_artifact_round_trip(tmp_path):
    model = build_model("resnet18", 3).eval()
    config = ModelConfig(arch="resnet18", classes=["a", "b", "c"], image_size=32,
                         hyperparameters={"lr": "0.1"}, metrics={"test_acc": 0.5})
    save_artifact(tmp_path, model, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pth"]
    assert isinstance(torch.load(tmp_path / "model.pth", weights_only=True), dict)  # a plain state_dict
    metadata = json.loads((tmp_path / "model.json").read_text())
    assert metadata["classes"] == ["a", "b", "c"] and metadata["num_classes"] == 3
    assert metadata["resize_size"] == 37 and metadata["mean"] == [0.485, 0.456, 0.406]
    assert metadata["versions"]["torch"] == torch.__version__ and metadata["metrics"] == {"test_acc": 0.5}
    loaded, loaded_config = load_artifact(tmp_path)
    assert not loaded.training and loaded_config.classes == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_broken_artifacts_say_why(tmp_path):
    with pytest.raises(ArtifactError, match="Cannot load the model from .*model.json"):
        load_artifact(tmp_path)
    save_artifact(tmp_path, build_model("resnet18", 2), ModelConfig("resnet18", ["a", "b"], 32))
    (tmp_path / "model.pth").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="Cannot load the model"):
        load_artifact(tmp_path)
    metadata = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(dict(metadata, format_version=99)))
    with pytest.raises(ArtifactError, match="unsupported artifact format 99"):
        load_artifact(tmp_path)


def test_pretrained_without_weights_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedWeightsError) as error:
        pretrained_state("resnet50")
    message = str(error.value)
    assert "resnet50-11ad3fa6.pth" in message and "'pretrained' channel" in message
    assert "pretrained=false" in message and "BAKE_WEIGHTS" in message


def test_pretrained_channel_and_cache_are_used(tmp_path, monkeypatch):
    source = torchvision.models.resnet18()
    channel = tmp_path / "pretrained"
    channel.mkdir()
    torch.save(source.state_dict(), channel / "weights.pth")
    state = pretrained_state("resnet18", channel)
    model = build_model("resnet18", 5, state)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 5
    # torch's own cache, under the file name torchvision expects (what BAKE_WEIGHTS fills)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    name = torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(source.state_dict(), cache / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.equal(pretrained_state("resnet18")["conv1.weight"], source.conv1.weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    channel = tmp_path / "pretrained"
    channel.mkdir()
    torch.save(torchvision.models.resnet50().state_dict(), channel / "w.pth")
    with pytest.raises(PretrainedWeightsError, match="do not fit resnet18"):
        build_model("resnet18", 2, pretrained_state("resnet18", channel))


@pytest.mark.parametrize("layers, trainable", [
    (0, {"fc"}), (1, {"fc", "layer4"}), (2, {"fc", "layer4", "layer3"}),
    (4, {"fc", "layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}),
])
def test_trainable_layers(layers, trainable):
    model = build_model("resnet18", 2)
    set_trainable(model, layers, "resnet18")
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == trainable


# torchvision's MobileNetV3s: the feature blocks where the resolution halves (stride 2) start a stage.
MOBILENET_STAGE_STARTS = {"mobilenet_v3_small": (1, 2, 4, 9), "mobilenet_v3_large": (2, 4, 7, 13)}


@pytest.mark.parametrize("arch", sorted(MOBILENET_STAGE_STARTS))
def test_mobilenet_stages_start_where_the_resolution_halves(arch):
    """The family table's stages match the network itself: each stage after the first starts at a block
    that halves the resolution, and the stages cover every feature block after the stem."""
    model = build_model(arch, 5).eval()
    sizes, picture = [], torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        for block in model.features:
            picture = block(picture)
            sizes.append(picture.shape[-1])
    halving = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    stages = family(arch).stages
    firsts = [int(stage[0].split(".")[1]) for stage in stages[1:]]
    assert halving == list(MOBILENET_STAGE_STARTS[arch]) and firsts[0] == 1 and firsts[1:] == halving[1:]
    covered = [int(prefix.split(".")[1]) for stage in stages for prefix in stage]
    assert covered == list(range(len(model.features)))
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("arch", sorted(MOBILENET_STAGE_STARTS))
def test_mobilenet_trains_its_classifier_and_the_last_stages(arch):
    model = build_model(arch, 5)

    def trained_blocks(layers):
        set_trainable(model, layers, arch)
        return {".".join(n.split(".")[:2]) if n.startswith("features.") else n.split(".")[0]
                for n, p in model.named_parameters() if p.requires_grad}

    blocks, last_stage = len(model.features), MOBILENET_STAGE_STARTS[arch][-1]
    assert trained_blocks(0) == {"classifier"}
    assert trained_blocks(1) == {"classifier"} | {f"features.{i}" for i in range(last_stage, blocks)}
    assert trained_blocks(4) == {"classifier"} | {f"features.{i}" for i in range(blocks)}


def test_pretrained_mobilenet_weights_load_all_but_the_head(tmp_path):
    channel = tmp_path / "pretrained"
    channel.mkdir()
    imagenet = torchvision.models.mobilenet_v3_small()
    torch.save(imagenet.state_dict(), channel / "w.pth")
    model = build_model("mobilenet_v3_small", 3, pretrained_state("mobilenet_v3_small", channel))
    assert torch.equal(model.features[5].block[0][0].weight, imagenet.features[5].block[0][0].weight)
    assert torch.equal(model.classifier[0].weight, imagenet.classifier[0].weight)
    assert model.classifier[3].out_features == 3
    with pytest.raises(PretrainedWeightsError, match="do not fit mobilenet_v3_large"):
        build_model("mobilenet_v3_large", 3, pretrained_state("mobilenet_v3_large", channel))


def test_atomic_write_syncs_a_unique_temporary_file_and_keeps_the_previous(tmp_path, monkeypatch):
    target, previous = tmp_path / "checkpoint.pth", tmp_path / "checkpoint.previous.pth"
    target.write_text("old")
    (tmp_path / "checkpoint.pth.tmp").mkdir()  # a fixed temporary name would collide with this
    synced, written = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))

    def write(tmp):
        written.append(tmp)
        tmp.write_text("new")

    atomic_write(target, write, keep_previous=previous)
    assert target.read_text() == "new" and previous.read_text() == "old"
    assert written[0].parent == tmp_path and written[0].name not in ("checkpoint.pth.tmp", "checkpoint.pth")
    assert synced == [str(written[0]), str(tmp_path)]  # the file before the rename, the folder after it


def test_atomic_write_that_fails_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "model.pth"
    target.write_text("good")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken, keep_previous=tmp_path / "previous.pth")
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_two_concurrent_atomic_writes_to_one_path_use_their_own_temporary_files(tmp_path):
    """Two writers of one path at once (a checkpoint saved while another save is still writing): each gets
    its own temporary file, both complete, and the file left is one of the two, whole."""
    import threading

    target = tmp_path / "checkpoint.pth"
    both_writing = threading.Barrier(2, timeout=30)  # each writer waits inside write() for the other
    temporaries, errors = {}, []
    contents = {name: name.encode() * 100_000 for name in ("first", "second")}  # 500-600 KB each

    def writer(name):
        def write(tmp):
            temporaries[name] = Path(tmp).name
            both_writing.wait()
            Path(tmp).write_bytes(contents[name])

        try:
            atomic_write(target, write)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=writer, args=(name,)) for name in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors  # both complete
    assert len(set(temporaries.values())) == 2, temporaries  # different temporary names
    assert target.read_bytes() in contents.values()  # whole: one writer's bytes, not a mix or a cut
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary left behind
