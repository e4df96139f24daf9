"""The pixels-to-tensor transforms, one definition for training and serving.

The evaluation transform (resize the short side to image_size / RESIZE_RATIO, centre-crop image_size, scale
to [0, 1], normalise) is what a request's picture goes through in serving and what valid/test pictures go
through in training, so both sides must take it from here. The training transform adds augmentation.

Two forms of the evaluation transform give the same numbers (a test proves it against torchvision's):
torchvision's, which the training job composes with its augmentation, and `EvalPixels`, the same steps in
Pillow and NumPy, which the model server uses: a worker serving with OpenVINO never imports torch or
torchvision (about 0.5 GB of RSS and 2 s of start per worker).
"""
import numpy as np
from PIL import Image

from . import constants


def build_transforms(image_size, augment, mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD):
    """(train, eval) torchvision transforms; augmentation on train only."""
    from torchvision import transforms  # here: the model server's lean workers use EvalPixels

    resize = round(image_size / constants.RESIZE_RATIO)
    evaluate = [transforms.Resize(resize, antialias=True), transforms.CenterCrop(image_size)]
    if augment == "none":
        train = list(evaluate)
    else:
        train = [transforms.RandomResizedCrop(image_size, scale=(0.25, 1.0), antialias=True)]
        if augment == "crop-flip":
            train.append(transforms.RandomHorizontalFlip())
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(train + tail), transforms.Compose(evaluate + tail)


class EvalPixels:
    """The evaluation transform in Pillow and NumPy: RGB PIL image -> float32 array (3, size, size), the
    numbers torchvision's Resize(antialias) + CenterCrop + ToTensor + Normalize give (its rules for the
    resized size and the crop's corner, Pillow's bilinear resize, float32 arithmetic in the same order)."""

    def __init__(self, image_size, mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD):
        self.image_size = image_size
        self.resize = round(image_size / constants.RESIZE_RATIO)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def resized_size(self, width, height):
        """(width, height) with the short side at `resize`, the long one truncated (torchvision's rule)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image):
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)  # Pillow's bilinear always antialiases, as torchvision's
        width, height = image.size
        top = int(round((height - self.image_size) / 2.0))
        left = int(round((width - self.image_size) / 2.0))
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (pixels - self.mean) / self.std
