"""Image classifier for SageMaker: the code that runs inside the container (train and serve).

Importing the package is cheap: nothing here imports torch, so the launcher can share its constants.
"""
__version__ = "0.1.0"
