"""The PyTorch peer of `benchmarks/pipeline.py`: decode + SwAV multi-crop with torchvision and
PIL in DataLoader workers, over a folder of images, as a PyTorch user would feed SEER.

    PYTHON benchmarks/peers/torch_pipeline.py --images=DIR [--crops=2x224,4x96] [--batch=32] \
        [--workers=2] [--batches=20]

Per crop (facebookresearch/swav `src/multicropdataset.py`, the recipe ours follows):
RandomResizedCrop(size, scale) with scale (0.14, 1) for the first crop group and (0.05, 0.14)
for the others, horizontal flip p=0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale
p=0.2, PIL Gaussian blur with p=0.5 and radius U(0.1, 2.0), ToTensor, ImageNet normalization.
Files PIL cannot open are dropped before timing (one would stop a DataLoader run; ours counts
and skips them). Prints one JSON object: images/s (an image = all its crops), crops/s.
torch is imported after the flags are read, so `--help` works in any interpreter.
"""

import argparse
import json
import os
import random
import sys
import time

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="folder, walked recursively")
    ap.add_argument("--crops", default="2x224,4x96")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="timed batches")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    return ap.parse_args(argv)


def crop_groups(text):
    """[(count, size, scale)] in the SwAV convention: first group large, the rest small."""
    groups = []
    for i, part in enumerate(text.split(",")):
        count, size = (int(v) for v in part.split(":")[0].lower().split("x"))
        groups.append((count, size, (0.14, 1.0) if i == 0 else (0.05, 0.14)))
    return groups


def readable_images(root, Image):
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(EXTENSIONS))
    good = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.convert("RGB")
            good.append(path)
        except Exception:  # noqa: BLE001 (any decode failure drops the file)
            pass
    return good


def make_dataset(torch, paths, groups, length):
    from PIL import Image, ImageFilter
    from torchvision import transforms as T

    def blur(img):
        if random.random() < 0.5:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return img

    def crop(size, scale):
        return T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(),
                          T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                          T.RandomGrayscale(p=0.2), T.Lambda(blur), T.ToTensor(),
                          T.Normalize(MEAN, STD)])

    per_crop = [crop(size, scale) for count, size, scale in groups for _ in range(count)]

    class MultiCrop(torch.utils.data.Dataset):
        def __len__(self):
            return length

        def __getitem__(self, i):
            with Image.open(paths[i % len(paths)]) as im:
                image = im.convert("RGB")
            return [t(image) for t in per_crop]

    return MultiCrop()


def run(args):
    import torch
    from PIL import Image

    groups = crop_groups(args.crops)
    paths = readable_images(args.images, Image)
    if not paths:
        raise SystemExit(f"torch_pipeline: no readable images under {args.images}")
    dataset = make_dataset(torch, paths, groups, args.batch * (args.batches + args.warmup))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
    batches = iter(loader)
    for _ in range(args.warmup):
        next(batches)
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += batch[0].shape[0]
    wall = time.perf_counter() - start
    n_crops = sum(count for count, _, _ in groups)
    return {"framework": "pytorch", "crops": args.crops, "batch": args.batch,
            "workers": args.workers, "images": images, "files": len(paths),
            "images_per_s": images / wall, "crops_per_s": images * n_crops / wall,
            "torch": torch.__version__}


def main(argv=None):
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
