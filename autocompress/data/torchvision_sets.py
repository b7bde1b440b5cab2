"""MNIST, Fashion-MNIST, CIFAR-10/100 and ImageFolder from local files; nothing is ever downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from autocompress.data import _images
from autocompress.data._images import ImageTensors, NormalisedImages, fit_uint8
from autocompress.data._registry import LoadedData, register_dataset
from autocompress.errors import UserInputError

_EXPECTED = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte (and t10k-*, *-labels-idx1-ubyte)",
    "fashion-mnist": "FashionMNIST/raw/train-images-idx3-ubyte (and t10k-*, *-labels-idx1-ubyte)",
    "cifar10": "cifar-10-batches-py/data_batch_1..5 and test_batch",
    "cifar100": "cifar-100-python/train and test",
}


def _missing(name: str, root: str) -> UserInputError:
    return UserInputError(
        f"data set {name!r} not found under --data-root {root!r}: expected {_EXPECTED[name]} "
        "(torchvision's on-disk format; autocompress never downloads)"
    )


def _tv_tensors(name: str, root: str, cls_name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One torchvision split as uint8 (N, C, H, W) images and labels."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        ds = cls(root=root, train=train, download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        raise _missing(name, root) from None
    data = torch.as_tensor(ds.data)
    targets = torch.as_tensor(ds.targets)
    if data.ndim == 3:  # (N, H, W) grey
        data = data.unsqueeze(1)
    else:  # (N, H, W, C)
        data = data.permute(0, 3, 1, 2)
    return data.to(torch.uint8), targets.long()


#: Data sets whose classes stay the same under a horizontal flip (hand-written digits do not).
_FLIP_INVARIANT = {"mnist": False, "fashion-mnist": True, "cifar10": True, "cifar100": True}


def _register(name: str, cls_name: str, classes: int, desc: str) -> None:
    @register_dataset(name, description=desc, needs_root=True)
    def _load(root: str | None, input_shape: tuple[int, int, int]) -> LoadedData:
        assert root is not None
        if not Path(root).is_dir():
            raise UserInputError(f"--data-root {root!r} is not a directory")
        train, test = (ImageTensors(fit_uint8(x, input_shape), y)
                       for x, y in (_tv_tensors(name, root, cls_name, split) for split in (True, False)))
        flip = _FLIP_INVARIANT[name]
        return LoadedData(train, classes, test=test, augment=flip, flip_invariant=flip)


_register("mnist", "MNIST", 10, "MNIST from --data-root (torchvision layout; test split held out)")
_register("fashion-mnist", "FashionMNIST", 10, "Fashion-MNIST from --data-root (torchvision layout; test split held out)")
_register("cifar10", "CIFAR10", 10, "CIFAR-10 from --data-root (torchvision layout; test split held out)")
_register("cifar100", "CIFAR100", 100, "CIFAR-100 from --data-root (torchvision layout; test split held out)")


#: Folders decoded lazily (too large to hold in memory) with up to this many images are still fully
#: decoded when loaded, so a corrupt file is named before any training starts; larger ones are
#: verified up front and decoded as each file is first read. In-memory folders decode everything.
FULL_CHECK_MAX_IMAGES = 5000

#: Held-out sub-folder names, in order of preference, next to ``train/``.
HELD_OUT_NAMES = ("test", "val")


class _FittedImageFolder(NormalisedImages):
    """Decodes images lazily and fits them to the model input (folders too large for memory)."""

    def __init__(self, path: str, input_shape: tuple[int, int, int]) -> None:
        import torchvision.datasets as tvd
        import torchvision.transforms.v2 as T

        c, h, w = input_shape
        super().__init__(c)
        steps = [T.ToImage(), T.Resize((h, w), antialias=True)]
        if c == 1:
            steps.append(T.Grayscale(1))
        steps += [T.ToDtype(torch.float32, scale=True)]
        self.folder = tvd.ImageFolder(path, transform=T.Compose(steps))
        self.channels = c

    def __len__(self) -> int:
        return len(self.folder)

    def _fitted(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            x, y = self.folder[i]
        except Exception as exc:  # noqa: BLE001 - a file that does not decode is the user's data
            raise _unreadable(self.folder.samples[i][0], exc) from None
        if x.shape[0] != self.channels:
            x = x.mean(0, keepdim=True).repeat(self.channels, 1, 1)
        return x, y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self._fitted(i)
        return (x - self.mean) / self.std, y

    def fit_stats(self, indices, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        import numpy as np

        idx = list(indices)
        if len(idx) > _images.STATS_SAMPLE:
            idx = np.random.default_rng(seed).choice(idx, _images.STATS_SAMPLE, replace=False).tolist()
        x = torch.stack([self._fitted(int(i))[0] for i in idx]).double()
        self.set_stats(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
        return self.mean.flatten().clone(), self.std.flatten().clone()


def _unreadable(file: str, exc: BaseException) -> UserInputError:
    line = " ".join(str(exc).split())[:160]
    return UserInputError(f"image {file!r} cannot be read: {type(exc).__name__}: {line}; "
                          "remove or replace the file")


def _check_images(files: list[str], full: bool) -> None:
    """Open every image (and decode it fully when ``full``) so a corrupt one is named up front."""
    from PIL import Image

    for file in files:
        try:
            with Image.open(file) as img:
                if full:
                    img.load()
                else:
                    img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad files
            raise _unreadable(file, exc) from None


def _decode(file: str, input_shape: tuple[int, int, int]):  # noqa: ANN202 - numpy array
    import numpy as np
    from PIL import Image

    c, h, w = input_shape
    try:
        with Image.open(file) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR, reducing_gap=None)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad files
        raise _unreadable(file, exc) from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def _decode_all(files: list[str], input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Every file decoded and fitted to ``input_shape`` as one uint8 tensor (threads: PIL's JPEG
    decoder releases the GIL, so both cores work)."""
    from concurrent.futures import ThreadPoolExecutor

    out = torch.empty((len(files), *input_shape), dtype=torch.uint8)
    view = out.numpy()

    def work(i: int) -> None:
        c = input_shape[0]
        arr = _decode(files[i], input_shape)
        view[i] = arr if arr.shape[0] == c else arr.mean(0, keepdims=True).repeat(c, 0)

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for _ in pool.map(work, range(len(files)), chunksize=256):
            pass
    return out


def _folder(path: str, input_shape: tuple[int, int, int]) -> tuple[NormalisedImages, list[str]]:
    """One class-per-sub-directory folder, in memory when it fits, else decoded lazily."""
    import torchvision.datasets as tvd

    try:
        classes, class_to_idx = tvd.folder.find_classes(path)
        samples = tvd.folder.make_dataset(path, class_to_idx, extensions=tvd.folder.IMG_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as exc:
        line = " ".join(str(exc).split())[:200]
        raise UserInputError(f"imagefolder {path!r} holds no images in class sub-directories: {line}") from None
    if len(classes) < 2:
        raise UserInputError(
            f"imagefolder {path!r} has {len(classes)} class ({', '.join(classes)}); a classifier needs "
            "at least 2 class sub-directories"
        )
    files = [f for f, _ in samples]
    labels = torch.as_tensor([y for _, y in samples], dtype=torch.long)
    c, h, w = input_shape
    if len(files) * c * h * w > _images.MAX_IN_MEMORY_BYTES:
        lazy = _FittedImageFolder(path, input_shape)
        _check_images(files, full=len(files) <= FULL_CHECK_MAX_IMAGES)
        return lazy, classes
    cache = _images.image_cache_dir() / f"{_images.folder_cache_key(Path(path), files, input_shape)}.npz"
    images = _images.load_cached(cache, len(files), input_shape)
    if images is None:
        images = _decode_all(files, input_shape)
        _images.save_cached(cache, images)
    return ImageTensors(images, labels), classes


def _held_out_dir(root: Path) -> Path | None:
    """``root/test`` (or ``root/val``) when ``root`` is a train/held-out layout, else None."""
    train = root / "train"
    if not train.is_dir() or not any(p.is_dir() for p in train.iterdir()):
        return None
    for name in HELD_OUT_NAMES:
        if (root / name).is_dir() and any(p.is_dir() for p in (root / name).iterdir()):
            return root / name
    return None


def load_imagefolder(path: str, input_shape: tuple[int, int, int]) -> LoadedData:
    """An ImageFolder (one sub-directory per class, at least two classes) at ``path``.

    When ``path`` holds ``train/`` and ``test/`` (or ``val/``) sub-folders of classes, they are used
    as given: validation and calibration are carved from ``train/`` and the held-out folder is the
    test split. Otherwise ``path`` itself is the class folder and is split as a whole. Every image
    is decoded before anything trains (a corrupt one is named in one line) and cached under
    ``$AUTOCOMPRESS_CACHE/images`` keyed by the folder's path and files' sizes and mtimes.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserInputError(f"imagefolder path {path!r} is not a directory (expected PATH/<class>/<image>)")
    held = _held_out_dir(root)
    if held is None:
        train, classes = _folder(path, input_shape)
        return LoadedData(train, len(classes), augment=True, flip_invariant=True)
    train, classes = _folder(str(root / "train"), input_shape)
    test, test_classes = _folder(str(held), input_shape)
    if test_classes != classes:
        extra = sorted(set(test_classes) ^ set(classes))
        raise UserInputError(
            f"imagefolder {path!r}: {held.name}/ and train/ must hold the same class sub-directories; "
            f"they differ in {', '.join(extra[:5]) or 'order'}"
        )
    return LoadedData(train, len(classes), test=test, augment=True, flip_invariant=True)

