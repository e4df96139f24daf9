"""Constants shared by the training job and the model server: file names, defaults. SageMaker's own
contract (the /opt/ml tree, SM_* variables, port, headers) is contract.py's."""

# Channels the training job reads (SM_CHANNEL_<NAME>).
TRAIN_CHANNEL = "train"
VALID_CHANNEL = "valid"
TEST_CHANNEL = "test"
PRETRAINED_CHANNEL = "pretrained"
# The dogImages zip has these sub-folders; a single `train` channel holding them is accepted too.
SPLIT_FOLDERS = {TRAIN_CHANNEL: "train", VALID_CHANNEL: "valid", TEST_CHANNEL: "test"}

# The artifact (SageMaker tars the model folder into model.tar.gz).
WEIGHTS_FILE = "model.pth"
METADATA_FILE = "model.json"
ARTIFACT_FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pth"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.pth"  # the one before, kept in case the newest does not load
BEST_WEIGHTS_FILE = "best.pth"  # the best-valid weights so far, beside the checkpoint (tested at the end)
# The OpenVINO forms of the network a training job adds to the artifact for CPU serving (training/quantize.py):
# fp32, and int8 when the accuracy gate keeps it (model.json's `quantization` record says which and why).
# Each is an OpenVINO IR: the .xml beside its weights (.bin). Artifacts without them are converted by serve.
OPENVINO_FOLDER = "openvino"
OPENVINO_FP32_MODEL = "model.xml"
OPENVINO_INT8_MODEL = "model-int8.xml"
INT8_ACCEPTED, INT8_REJECTED, INT8_SKIPPED = "accepted", "rejected", "skipped"  # the record's decision

# Pictures the data loader accepts, compared lower-case (the dog set mixes .jpg and .JPG).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# ImageNet normalisation used by torchvision's pretrained ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes the short side to image_size / RESIZE_RATIO, then centre-crops (torchvision's 256/224).
RESIZE_RATIO = 224 / 256

# Exit code for a job stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, like a shell).
SIGTERM_EXIT_CODE = 143
# Fault injection for tests: the job sends itself (its process group, as a platform stop does) SIGTERM right
# after this global training step. Read once by TrainingEnvironment.
STOP_AT_STEP_ENV = "IMAGE_CLASSIFIER_STOP_AT_STEP"

# Debugging and profiling outputs (diagnostics/: debugger_hook.py, debugger_rules.py, profiling.py; read back by the launcher's report).
# smdebug's tensors go to <output>/tensors (contract.TENSORS_FOLDER), where SageMaker's DebugHookConfig
# LocalPath also points.
# Where the tensors go when SageMaker passes no Debugger hook configuration (default <output>/tensors): the
# launcher's `train --no-debugger` points it into output/data, which SageMaker uploads as output.tar.gz.
TENSORS_DIR_ENV = "IMAGE_CLASSIFIER_TENSORS_DIR"
RULES_FILE = "rules.json"
PREDICTIONS_FILE = "test_predictions.json"
PROFILER_TRACE_FILE = "profiler_trace.json"
PROFILER_OPS_FILE = "profiler_ops.json"
PROFILER_TABLE_FILE = "profiler_ops.txt"
SYSTEM_METRICS_FILE = "system_metrics.json"

# Data-parallel training: the hyperparameter of sagemaker-training's own torchrun runner. "true" and "false"
# force torchrun or a plain process; "auto" lets toolkit_entry decide from hosts x GPUs. The toolkit reads the
# key too: any value but false/"false" (JSON) puts the job's instance group in its distribution hosts.
TORCH_DISTRIBUTED_HYPERPARAMETER = "sagemaker_torch_distributed_enabled"
TORCH_DISTRIBUTED_AUTO = "auto"


def distribution_hyperparameter(instance_count):
    """The value the launcher sends for TORCH_DISTRIBUTED_HYPERPARAMETER, always (so a warm start and every
    trial see the same static set): torchrun across several instances, else toolkit_entry's choice (one
    instance with several GPUs runs torchrun, one GPU or none a plain process)."""
    return "true" if int(instance_count) > 1 else TORCH_DISTRIBUTED_AUTO

# The job's progress line inside an epoch (loop.Progress): this prefix, at most every PROGRESS_SECONDS (the
# environment variable overrides it; tests use 0). Its text holds no `key=value`, so no metric regex reads it.
PROGRESS_PREFIX = "progress: "
PROGRESS_SECONDS = 15
PROGRESS_SECONDS_ENV = "IMAGE_CLASSIFIER_PROGRESS_SECONDS"

# Cores that other processes keep busy on average, from which a CPU job counts one core as taken: it trains on
# the others (training/cpu_share.py), and a local job's summary says it ran slower than the machine can.
CORE_TAKEN_FROM = 0.5
# Set (to 1) by `launch.py train --local`: the job gives way to other processes. Off elsewhere: a SageMaker job is
# alone on its host, and a job run without the launcher keeps its thread count, so its run is bit for bit.
GIVE_WAY_ENV = "IMAGE_CLASSIFIER_GIVE_WAY"
