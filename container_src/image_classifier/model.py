"""The network and its artifact: build a ResNet or a MobileNetV3 with a new head, load pretrained weights, save/load.

The artifact is two files in the model folder: `model.pth` (a state_dict only, loadable with
`weights_only=True`) and `model.json` (everything needed to use it: arch, classes, preprocessing,
hyperparameters, final metrics, library versions, the int8 model's record). A job that quantized the
model adds its OpenVINO forms in `openvino/` (fp32, and int8 when the accuracy gate kept it:
training/quantize.py). Torch is imported where the weights are used, never for model.json: a model server
worker that runs OpenVINO reads only that (`read_config`).
"""
import hashlib
import json
import logging
import os
import pickle
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__, constants
from .contract import atomic_write
from .metrics import quote_for_log

log = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be found; the message says how to fix it."""


class ArtifactError(RuntimeError):
    """The model folder does not hold a usable artifact."""


class UnsafePickleError(ArtifactError):
    """A weights file whose pickle references code (a function or class): refused, never unpickled."""


@dataclass
class ModelConfig:
    arch: str
    classes: list
    image_size: int
    mean: tuple = constants.IMAGENET_MEAN
    std: tuple = constants.IMAGENET_STD
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # The int8 model's record (training/quantize.py): decision (accepted, rejected, skipped), reason, both
    # valid accuracies. Empty in artifacts from before int8 models, which serve as they always did.
    quantization: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def resize_size(self):
        return round(self.image_size / constants.RESIZE_RATIO)

    @property
    def int8_accepted(self):
        return self.quantization.get("decision") == constants.INT8_ACCEPTED


# Each family's new head (the last Linear layer, replaced for our classes), what trains with it (a
# MobileNetV3's classifier has a hidden Linear layer before the head) and its stages, from the input side:
# the stem, then one stage per resolution (1/4, 1/8, 1/16, 1/32). A ResNet's stages are layer1-4; a
# MobileNetV3's are its feature blocks grouped the same way (torchvision's inverted_residual_setting).
def _blocks(first, last):
    return tuple(f"features.{index}" for index in range(first, last + 1))


@dataclass(frozen=True)
class Family:
    head: str
    head_group: str
    stages: tuple


FAMILIES = {
    "resnet": Family("fc", "fc", (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))),
    "mobilenet_v3_small": Family("classifier.3", "classifier", (("features.0",), _blocks(1, 1), _blocks(2, 3),
                                                                _blocks(4, 8), _blocks(9, 12))),
    "mobilenet_v3_large": Family("classifier.3", "classifier", (("features.0",), _blocks(1, 3), _blocks(4, 6),
                                                                _blocks(7, 12), _blocks(13, 16))),
}


def family(arch):
    return next(value for prefix, value in FAMILIES.items() if arch.startswith(prefix))


def _under(name, prefixes):
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def build_model(arch, num_classes, backbone_state=None):
    """A torchvision network (config.ARCHS) with a new head for `num_classes`; `backbone_state` (ImageNet
    weights of the same architecture) is loaded before the head is replaced, all but the old head."""
    import torchvision
    from torch import nn

    model = torchvision.models.get_model(arch, weights=None)
    head = family(arch).head
    if backbone_state is not None:
        backbone_state = {k: v for k, v in backbone_state.items() if not _under(k, [head])}
        try:
            missing, unexpected = model.load_state_dict(backbone_state, strict=False)
        except RuntimeError as error:  # shape mismatches: weights of another architecture
            raise PretrainedWeightsError(f"The pretrained weights do not fit {arch}: {str(error)[:300]}") from None
        if unexpected or any(not _under(key, [head]) for key in missing):
            raise PretrainedWeightsError(
                f"The pretrained weights do not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    model.set_submodule(head, nn.Linear(model.get_submodule(head).in_features, num_classes))
    return model


def set_trainable(model, trainable_layers, arch):
    """Freeze all but the head and the last `trainable_layers` stages (4 = the whole network)."""
    parts = family(arch)
    trainable = [parts.head_group, *[prefix for stage in parts.stages[::-1][:trainable_layers] for prefix in stage]]
    if trainable_layers >= 4:
        trainable += parts.stages[0]  # the stem
    for name, parameter in model.named_parameters():
        parameter.requires_grad = _under(name, trainable)


def pretrained_state(arch, channel_dir=None, allow_download=False):
    """ImageNet weights for `arch`: from the `pretrained` channel, else torch's cache, else a download
    when allowed. Never silently random: with none of these it raises with the ways to fix it."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file_name = os.path.basename(weights.url)
    if channel_dir is not None and Path(channel_dir).is_dir():
        files = sorted(p for p in Path(channel_dir).rglob("*") if p.suffix in (".pth", ".pt"))
        preferred = [p for p in files if p.name == file_name] or files
        if not preferred:
            raise PretrainedWeightsError(f"The 'pretrained' channel ({channel_dir}) has no .pth/.pt file.")
        # The file name is data: quoted, so it cannot forge a metric line.
        log.info("Loading pretrained weights from the 'pretrained' channel: %s", quote_for_log(preferred[0]))
        state = load_weights(preferred[0])
        return state.get("model", state) if isinstance(state, dict) else state
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if cached.is_file() or allow_download:
        log.info("Loading %s weights %s (%s)", arch, weights, "cached" if cached.is_file() else "downloading")
        if not cached.is_file():
            _download(weights.url, cached)
        # Read here with weights_only=True: torchvision's get_state_dict loads the cache with weights_only=False.
        return load_weights(cached)
    raise PretrainedWeightsError(
        f"pretrained=true needs the ImageNet weights of {arch} ({file_name}), but they are not cached at "
        f"{cached}, no 'pretrained' channel was given and weights-download is false. {_FIX_HINT}")


_FIX_HINT = ("Fix: give the weights file as a 'pretrained' channel, build the image with "
             "--build-arg BAKE_WEIGHTS=true, set weights-download=true where the job has internet, "
             "or train from scratch with pretrained=false.")


def _download(url, target):
    """torch's cache download, checked against the hash prefix in the file name (as torchvision does)."""
    import torch

    found = torch.hub.HASH_REGEX.search(target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), found.group(1) if found else None, progress=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise PretrainedWeightsError(f"Could not download {url}: {error}. {_FIX_HINT}") from None


def load_weights(path):
    """`torch.load` that never runs code: tensors and plain containers only (`weights_only=True`, passed
    explicitly so that TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off). A pickle that names anything
    else (a function, a class) is refused with UnsafePickleError, before any of it runs."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:  # not a pickle that asks for code: a damaged file, reported as such by the caller
            raise
        raise UnsafePickleError(f"Refused to load {quote_for_log(path)}: it is not a plain weights file (its pickle asks for "
                                f"{found.group(1)}), and loading it could run code. Only tensors and plain "
                                "containers are read.") from None


def save_artifact(model_dir, model, config):
    import torch
    import torchvision

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(model_dir / constants.WEIGHTS_FILE, lambda p: torch.save(state, p))
    metadata = {
        "format_version": constants.ARTIFACT_FORMAT_VERSION,
        **asdict(config),
        "num_classes": config.num_classes,
        "resize_size": config.resize_size,
        "versions": {"image_classifier": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "python": platform.python_version()},
    }
    atomic_write(model_dir / constants.METADATA_FILE, lambda p: p.write_text(json.dumps(metadata, indent=2)))


def record_quantization(model_dir, record):
    """Add the int8 model's record to a saved artifact's model.json."""
    path = Path(model_dir) / constants.METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["quantization"] = record
    atomic_write(path, lambda p: p.write_text(json.dumps(metadata, indent=2)))


def read_config(model_dir):
    """The artifact's ModelConfig from its model.json alone (no torch). Raises ArtifactError with the reason."""
    try:
        metadata = json.loads((Path(model_dir) / constants.METADATA_FILE).read_text())
        if metadata.get("format_version") != constants.ARTIFACT_FORMAT_VERSION:
            raise ArtifactError(f"unsupported artifact format {metadata.get('format_version')!r}")
        return ModelConfig(**{k: metadata[k] for k in ModelConfig.__dataclass_fields__ if k in metadata})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArtifactError(f"Cannot load the model from {model_dir}: {type(error).__name__}: {error}") from None


def openvino_model(model_dir, int8=False):
    """The path of the artifact's OpenVINO model (fp32, or int8), or None when the artifact has none."""
    path = Path(model_dir) / constants.OPENVINO_FOLDER / (
        constants.OPENVINO_INT8_MODEL if int8 else constants.OPENVINO_FP32_MODEL)
    return path if path.is_file() and path.with_suffix(".bin").is_file() else None


def fingerprint(model_dir):
    """The sha256 of the artifact's weights: what serve's export was made from, checked by the workers that
    use the export without torch (they cannot compare with eager)."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / constants.WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_artifact(model_dir, device="cpu"):
    """(model in eval mode on `device`, ModelConfig). Raises ArtifactError with the reason."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        state = load_weights(model_dir / constants.WEIGHTS_FILE)
        model = build_model(config.arch, config.num_classes)
        model.load_state_dict(state)
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ArtifactError(f"Cannot load the model from {model_dir}: {type(error).__name__}: {error}") from None
    return model.to(device).eval(), config


def unwrap(model):
    """The plain module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)
