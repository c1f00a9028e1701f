"""Evaluation inputs, in one place: labeled splits, eval/fine-tune preprocessing, low-shot subsets.

bin/evaluate, eval/finetune, bin/extract_features and the serving export read images only
through here, so every path crops, rounds and normalizes the same way:
  * `splits`: ImageFolder trees, list files, prepared TFDS datasets and the built-in digits as
    `Split`s (labels first, images on demand); `list_images` for unlabeled folders/lists.
  * `preprocess`: decoding (PIL-exact JPEG), torchvision Resize + CenterCrop + Normalize, and
    the fine-tuning RandomResizedCrop (`data.multicrop.sample_box`) + flip.
  * `subsets`: class-balanced low-shot draws and the published ImageNet 1% / 10% lists.
"""

from seer_tf.eval.inputs.preprocess import (IMAGENET_MEAN, IMAGENET_STD, augment, center_crop,
                                            decode_image_bytes, eval_batches, eval_preprocess,
                                            normalize, resize_shorter_side, train_preprocess)
from seer_tf.eval.inputs.splits import (DIGITS, IMAGE_SUFFIXES, Split, digits_split,
                                        folder_split, list_images, list_split, load_splits,
                                        resolve, tfds_split)
from seer_tf.eval.inputs.subsets import (balanced_subset, example_keys, indices_from_file,
                                         shots_per_class, subset_report)

__all__ = [
    "DIGITS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "Split", "augment",
    "balanced_subset", "center_crop", "decode_image_bytes", "digits_split", "eval_batches",
    "eval_preprocess", "example_keys", "folder_split", "indices_from_file", "list_images",
    "list_split", "load_splits", "normalize", "resolve", "resize_shorter_side", "shots_per_class",
    "subset_report", "tfds_split", "train_preprocess",
]
