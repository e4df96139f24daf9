"""The training job: what `train` runs inside the container.

toolkit_entry.py (the sagemaker-training toolkit's framework module) starts job.py once per host, or once per
GPU under torchrun; job.py reads the environment (environment.py) and the hyperparameters
(hyperparameters.py), loads the data (data.py, decode_cache.py), joins the other processes
(distributed.py), runs loop.py's train_one_epoch / evaluate each epoch, saves checkpoints.py's checkpoint,
and writes the artifact through the shared model.py. Imports the ground and diagnostics/, never serving/.
"""
