"""The pixels-to-tensor transforms, one definition for training and serving.

The evaluation transform (resize the short side to image_size / RESIZE_RATIO, centre-crop image_size, scale
to [0, 1], normalise) is what a request's picture goes through in serving and what valid/test pictures go
through in training, so both sides must take it from here. The training transform adds augmentation.
"""
from torchvision import transforms

from . import constants


def build_transforms(image_size, augment, mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD):
    """(train, eval) transforms; augmentation on train only."""
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
