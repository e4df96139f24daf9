"""The training job's entry point, run by sagemaker-training's `train` as /opt/ml/code/$SAGEMAKER_PROGRAM.

The real code is the installed `image_classifier` package; this shim only hands over to it.
"""
from image_classifier.training.job import main

if __name__ == "__main__":
    raise SystemExit(main())
