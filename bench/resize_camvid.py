"""Write a copy of the CamVid SegNet-layout folder with every frame resized, for fast benchmarks.

Images are resized with PIL bilinear, labels with nearest, exactly as `--resize` does at load time, so
evaluation at that size sees the same pixels; `splits/` and the README are copied, and a `splits/full/` is
added whose labeled list is every train frame: the fully supervised upper bound of a split's semi-supervised
runs (its `unlabeled.txt` repeats the list, which the `supervised` preset ignores). The 240x180 copy is small
enough to travel to a GPU machine (about 20 MB).

    python bench/resize_camvid.py --camvid ../shared/data/camvid --output .camvid240 --shorter_side 180
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import PIL.Image
from tqdm.auto import tqdm

from maskmatch_hf.data_transforms import Resize


def resize_camvid(camvid: Path, output: Path, shorter_side: int) -> None:
    resize = Resize(shorter_side=shorter_side)
    files = [
        (folder, path)
        for folder in ("train", "trainannot", "val", "valannot")
        for path in (camvid / folder).glob("*.png")
    ]
    for folder, path in tqdm(files, desc="resize"):
        image = PIL.Image.open(path)
        resample = PIL.Image.NEAREST if folder.endswith("annot") else PIL.Image.BILINEAR
        (output / folder).mkdir(parents=True, exist_ok=True)
        image.resize(resize(image.size), resample).save(output / folder / path.name, optimize=True)
    shutil.copytree(camvid / "splits", output / "splits", dirs_exist_ok=True)
    shutil.copy(camvid / "README.md", output / "README.md")
    every_frame = "".join(f"{path.stem}\n" for path in sorted((camvid / "train").glob("*.png")))
    (output / "splits" / "full").mkdir(exist_ok=True)
    for name in ("labeled.txt", "unlabeled.txt"):
        (output / "splits" / "full" / name).write_text(every_frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--shorter_side", type=int, default=180)
    args = parser.parse_args()
    resize_camvid(args.camvid, args.output, args.shorter_side)


if __name__ == "__main__":
    main()
