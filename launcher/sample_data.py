"""The embedded sample dataset: scikit-learn's handwritten digits (1,797 real 8x8 pictures, 10 classes),
written as PNG files in the dogImages layout (`train/ valid/ test/`, one folder per class)."""
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_SEED = 0  # fixed, so every machine gets the same split
VALID_SHARE = TEST_SHARE = 0.15


def write_digits(dest):
    """Write the digits under `dest` (skipped when already complete); returns a {split: count} dict."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    dest = Path(dest)
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, rest = train_test_split(indices, test_size=VALID_SHARE + TEST_SHARE, stratify=digits.target,
                                   random_state=SPLIT_SEED)
    valid, test = train_test_split(rest, test_size=TEST_SHARE / (VALID_SHARE + TEST_SHARE),
                                   stratify=digits.target[rest], random_state=SPLIT_SEED)
    marker = dest / ".complete"
    counts = {"train": len(train), "valid": len(valid), "test": len(test)}
    if marker.is_file():
        return counts
    for split, members in (("train", train), ("valid", valid), ("test", test)):
        for index in sorted(members):
            label = int(digits.target[index])
            folder = dest / split / f"{label:03d}.{DIGIT_NAMES[label]}"
            folder.mkdir(parents=True, exist_ok=True)
            # 0..16 intensities -> 0..255, black ink on white like a scanned page.
            pixels = (255 - digits.images[index] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{DIGIT_NAMES[label]}_{index:05d}.png")
    marker.write_text("")
    return counts
