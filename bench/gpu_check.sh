#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (12 minutes at most on one GPU):
#   1. what the machine has: driver, GPUs, and the CUDA build of the locked torch;
#   2. the `gpu`-marked tests (AMP training, NCCL data parallel on every visible GPU, serving on the GPU);
#   3. ResNet-50 training throughput at 224 px, AMP (float16) and channels_last, images/s;
#   4. the real job on dog-like JPEGs at 224 px with the decode cache on and off: wall-clock pictures/s and the
#      data-wait share (target < 5 % with the cache).
# Exits non-zero when CUDA is unusable, a test fails or the throughput run fails.
#
#   bench/gpu_check.sh            (from the repository root, after `make setup`)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
status=0

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
timeout 60 "$PY" - <<'EOF' || exit 1
import sys, torch
from image_classifier import cuda_check
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}, "
      f"{torch.cuda.device_count()} GPU(s)")
cuda_check.require_usable_gpu()  # the job's own check: names the driver and the fix if CUDA cannot start
if not torch.cuda.is_available():
    sys.exit("no usable GPU: nothing to check")
EOF

echo "== GPU device files for the model server's user (serve, run as root, drops to it)"
ls -l /dev/nvidia* /dev/dri 2>&1 | head -20
if [ "$(id -u)" = 0 ]; then
  timeout 60 "$PY" - <<'EOF' || status=1
import os, subprocess, sys
from image_classifier.serving import serve, settings
account = serve.server_account(settings.load(), os.environ)
if account is None:  # outside the image: no model-server user; check with nobody and the same groups
    account = serve.server_account(settings.load({settings.SERVER_USER_ENV: "nobody"}),
                                   {settings.SERVER_USER_ENV: "nobody"})
check = 'for d in /dev/nvidia* /dev/dri/renderD*; do [ -c "$d" ] || continue; if [ -r "$d" ] && [ -w "$d" ]; then echo "usable: $d"; else echo "NOT usable: $d"; bad=1; fi; done; exit ${bad:-0}'
result = subprocess.run(["sh", "-c", check], **account.popen_arguments())
print(f"as {account.name} (groups {account.groups}):", "ok" if result.returncode == 0 else "a device is not usable")
sys.exit(result.returncode)
EOF
fi

echo "== gpu tests"
timeout 300 "$PY" -m pytest -m gpu -q -rs tests/ground/test_gpu.py tests/training/test_gpu_input.py tests/training/test_decode_cache.py || status=1

echo "== ResNet-50 AMP training throughput, 224 px, channels_last"
timeout 150 "$PY" - <<'EOF' || status=1
import time, torch
from image_classifier.model import build_model
torch.backends.cudnn.benchmark = True
device = torch.device("cuda")
model = build_model("resnet50", 133).to(device, memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scaler = torch.amp.GradScaler("cuda")
criterion = torch.nn.CrossEntropyLoss()
batch = 64
images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 133, (batch,), device=device)

def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = criterion(model(images), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

rates = []
for _ in range(10):
    step()  # warm-up: cuDNN picks its algorithms
for repeat in range(3):
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(30):
        step()
    torch.cuda.synchronize()
    rates.append(30 * batch / (time.perf_counter() - started))
print(f"{torch.cuda.get_device_name(0)}: ResNet-50 224 px batch {batch} AMP channels_last: "
      f"{sorted(rates)[1]:.0f} images/s (runs {', '.join(f'{r:.0f}' for r in rates)}), "
      f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
EOF
echo "== training pictures/s on the GPU, decode cache on and off, data-wait share (target < 5 % with the cache)"
timeout 180 "$PY" bench/bench_input.py --training --arch resnet50 --trainable-layers 1 --batch-size 64 --workers -1 \
    --pictures-per-class 150 --epochs 3 --rounds 2 --wait-target 0.05 || status=1
exit $status
