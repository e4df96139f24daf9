"""Channels, class names, scanning and loading image-folder datasets."""
import os
import signal

import torch
import pytest
from PIL import Image

from image_classifier.preprocessing import build_transforms
from image_classifier.training.data import EpochSampler, PictureDataset, collate
from image_classifier.training.layout import DataError, check_pictures, class_name, load_splits, resolve_splits
from conftest import make_dataset, write_picture


@pytest.mark.parametrize("folder, name", [
    ("001.Affenpinscher", "Affenpinscher"),
    ("045.German_shepherd_dog", "German shepherd dog"),
    ("cats", "cats"),
    ("7_seven", "seven"),
])
def test_class_names_come_from_folder_names(folder, name):
    assert class_name(folder) == name


def test_one_channel_with_dogimages_subfolders(tmp_path):
    root = make_dataset(tmp_path / "dogImages")
    splits = resolve_splits({"train": root})
    assert splits == {"train": root / "train", "valid": root / "valid", "test": root / "test"}


def test_separate_channels(tmp_path):
    root = make_dataset(tmp_path / "d")
    channels = {"train": root / "train", "valid": root / "valid", "test": root / "test"}
    assert resolve_splits(channels) == channels


def test_missing_valid_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2})
    with pytest.raises(DataError, match="No validation pictures: .* needs a valid/ folder beside train/"):
        resolve_splits({"train": root / "train"})
    with pytest.raises(DataError, match="No training data"):
        resolve_splits({"valid": root})


def test_splits_have_sorted_classes_and_all_pictures(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 4, "valid": 2, "test": 2})
    (root / "train" / "001.Red_fox" / "notes.txt").write_text("not a picture")  # stray files are ignored
    (root / "train" / "001.Red_fox" / ".DS_Store").write_bytes(b"\0")
    splits = load_splits({"train": root})
    assert splits.classes == ["Red fox", "Green frog", "Blue whale"]
    assert {k: len(v) for k, v in splits.samples.items()} == {"train": 12, "valid": 6, "test": 6}
    assert any(p.endswith(".JPG") for p, _ in splits.samples["train"])  # mixed-case extensions count
    assert sorted({label for _, label in splits.samples["train"]}) == [0, 1, 2]


def test_mismatched_classes_are_refused(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    (root / "valid" / "003.Blue_whale").rename(root / "valid" / "004.Grey_seal")
    with pytest.raises(DataError, match=r"'valid' classes do not match 'train': missing \[\"003.Blue_whale\"\], "
                                        r"extra \[\"004.Grey_seal\"\]"):
        load_splits({"train": root})


def test_empty_training_class_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    (root / "train" / "004.Empty").mkdir()
    (root / "valid" / "004.Empty").mkdir()
    with pytest.raises(DataError, match='Class folders with no pictures in .train.: "004.Empty"'):
        load_splits({"train": root})


def test_no_class_folders_or_no_pictures(tmp_path):
    (tmp_path / "flat" / "train").mkdir(parents=True)
    write_picture(tmp_path / "flat" / "train" / "a.jpg", (1, 2, 3))
    (tmp_path / "flat" / "valid").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        load_splits({"train": tmp_path / "flat"})
    root = tmp_path / "empty"
    for split in ("train", "valid"):
        (root / split / "001.A").mkdir(parents=True)
        (root / split / "001.A" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no pictures"):
        load_splits({"train": root})


def _corrupt(root):
    bad = root / "train" / "002.Green_frog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    return bad


def test_corrupt_pictures_are_skipped_with_a_warning(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", {"train": 3, "valid": 2})
    bad = _corrupt(root)
    splits = load_splits({"train": root}, on_bad_image="skip")
    assert str(bad) not in [p for p, _ in splits.samples["train"]]
    assert splits.bad_files["train"] == [str(bad)]
    assert "Skipping 1 unreadable picture(s) in 'train'" in caplog.text and "broken.jpg" in caplog.text


def test_a_picture_in_a_format_outside_the_allowlist_is_skipped_at_scan_time(tmp_path):
    """An icon named .jpg is a readable picture to Pillow, but not one of the formats the job decodes."""
    root = make_dataset(tmp_path / "d", {"train": 3, "valid": 2})
    icon = root / "train" / "002.Green_frog" / "icon.jpg"
    Image.new("RGB", (16, 16), (30, 200, 30)).save(icon, format="ICO")
    splits = load_splits({"train": root}, on_bad_image="skip")
    assert splits.bad_files["train"] == [str(icon)]


def test_corrupt_pictures_fail_the_job_when_asked(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 3, "valid": 2})
    _corrupt(root)
    with pytest.raises(DataError, match=r"1 unreadable picture\(s\) in 'train' \(on-bad-image=fail\): .*broken.jpg"):
        load_splits({"train": root}, on_bad_image="fail")


def test_truncated_picture_is_dropped_at_load_time(tmp_path):
    good = write_picture(tmp_path / "good.jpg", (200, 0, 0), size=64)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])  # header intact: passes verify(), fails decoding
    samples = [(str(good), 0), (str(truncated), 1)]
    kept, bad = check_pictures(samples, "skip", "train")
    train_tf, _ = build_transforms(16, "none")
    dataset = PictureDataset(kept, train_tf)
    images, labels, bad_items = collate([dataset[(0, i)] for i in range(len(kept))])
    assert images.shape[1:] == (3, 16, 16)
    assert len(images) + len(bad_items) + len(bad) == 2 and len(images) == 1


def test_augmentation_is_seeded_per_sample_and_epoch(tmp_path):
    picture = write_picture(tmp_path / "p.png", (10, 200, 30), size=40)
    train_tf, _ = build_transforms(16, "crop-flip")
    dataset = PictureDataset([(str(picture), 0)], train_tf, seed=7)
    first, again, other_epoch = dataset[(1, 0)][0], dataset[(1, 0)][0], dataset[(2, 0)][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)
    state = torch.random.get_rng_state()
    dataset[(3, 0)]
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_epoch_sampler_is_a_fixed_permutation_and_resumes_mid_epoch():
    sampler = EpochSampler(10, seed=3, shuffle=True)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for _, i in full) == list(range(10)) and all(e == 2 for e, _ in full)
    sampler.set_epoch(2, start=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in full]
    shards = [list(EpochSampler(10, 3, True, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(i for shard in shards for _, i in shard) == list(range(10))


def test_only_regular_files_inside_the_channel_are_read(tmp_path, caplog):
    """A symlink out of the channel, a FIFO named *.jpg (opening it would hang the job) and a dangling link
    are skipped with a count; a link that stays inside the channel is read."""
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    secret = write_picture(tmp_path / "outside" / "secret.jpg", (1, 2, 3))
    frog = root / "train" / "002.Green_frog"
    (frog / "link-out.jpg").symlink_to(secret)
    (frog / "dangling.jpg").symlink_to(tmp_path / "nothing.jpg")
    os.mkfifo(frog / "fifo.jpg")
    (frog / "linked-folder").symlink_to(secret.parent, target_is_directory=True)
    inside = frog / "link-in.jpg"
    inside.symlink_to(root / "valid" / "002.Green_frog" / "Green_frog_00001.jpg")
    (root / "train" / "004.Outside").symlink_to(secret.parent, target_is_directory=True)  # not a class

    def hung(signum, frame):
        raise TimeoutError("reading the channel hung: a FIFO was opened")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        splits = load_splits({"train": root})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    train = [path for path, _ in splits.samples["train"]]
    assert str(inside) in train and len(train) == 7
    assert not any(name in path for path in train for name in ("link-out", "dangling", "fifo", "secret"))
    assert splits.folders == ["001.Red_fox", "002.Green_frog", "003.Blue_whale"]
    assert "Skipped 4 entries in 'train' that are not regular files inside the data folder" in caplog.text


def test_a_link_out_of_a_separate_channel_is_skipped(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    (root / "valid" / "001.Red_fox" / "up.jpg").symlink_to(root / "train" / "001.Red_fox" / "Red_fox_00001.jpg")
    splits = load_splits({"train": root / "train", "valid": root / "valid"})
    assert len(splits.samples["valid"]) == 6 and "Skipped 1 entries in 'valid'" in caplog.text
    nested = load_splits({"train": root})  # the same link stays inside one channel holding both splits
    assert len(nested.samples["valid"]) == 7


def test_names_and_paths_are_quoted_in_messages(tmp_path, caplog):
    root = make_dataset(tmp_path / "d", {"train": 2, "valid": 2}, classes=("001.a", "002.b epoch=3 c"))
    (root / "train" / "002.b epoch=3 c" / "x\nvalid_acc=1.jpg").write_bytes(b"broken")
    load_splits({"train": root})
    message = next(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert "\n" not in message and "=" not in message.split(":", 1)[1]
    assert '002.b epoch\\u003d3 c/x\\nvalid_acc\\u003d1.jpg"' in message
