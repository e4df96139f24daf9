"""Image classifier for SageMaker: the code that runs inside the container (train and serve).

Three subpackages over a small shared ground (docs/ARCHITECTURE.md):
    training/      the job `train` runs          serving/      the model server `serve` runs
    diagnostics/   Debugger hook, profiler, rules (run by training/)
    the ground     contract, constants, metrics, images, preprocessing, model, cuda_check: imported by all,
                   importing no subpackage
Importing the package is cheap: nothing here imports torch, so the launcher can share its constants.
"""
__version__ = "0.1.0"
