"""MNIST, Fashion-MNIST, CIFAR-10/100 and ImageFolder from local files; nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from autocompress.data._registry import register_dataset
from autocompress.data._transforms import fit_images, to_float01
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


def _tv_tensors(name: str, root: str, cls_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    parts = []
    for train in (True, False):
        try:
            ds = cls(root=root, train=train, download=False)
        except (RuntimeError, FileNotFoundError, OSError):
            raise _missing(name, root) from None
        data = torch.as_tensor(ds.data)
        targets = torch.as_tensor(ds.targets)
        parts.append((data, targets))
    data = torch.cat([p[0] for p in parts])
    targets = torch.cat([p[1] for p in parts])
    if data.ndim == 3:  # (N, H, W) grey
        data = data.unsqueeze(1)
    else:  # (N, H, W, C)
        data = data.permute(0, 3, 1, 2)
    return to_float01(data), targets.long()


def _register(name: str, cls_name: str, classes: int, desc: str) -> None:
    @register_dataset(name, description=desc, needs_root=True)
    def _load(root: str | None, input_shape: tuple[int, int, int]) -> tuple[Dataset, int]:
        assert root is not None
        if not Path(root).is_dir():
            raise UserInputError(f"--data-root {root!r} is not a directory")
        x, y = _tv_tensors(name, root, cls_name)
        return TensorDataset(fit_images(x, input_shape), y), classes


_register("mnist", "MNIST", 10, "MNIST from --data-root (torchvision layout)")
_register("fashion-mnist", "FashionMNIST", 10, "Fashion-MNIST from --data-root (torchvision layout)")
_register("cifar10", "CIFAR10", 10, "CIFAR-10 from --data-root (torchvision layout)")
_register("cifar100", "CIFAR100", 100, "CIFAR-100 from --data-root (torchvision layout)")


#: Folders up to this many images are fully decoded when loaded, so a corrupt file is named
#: before any training starts; larger ones are checked lazily (each file as it is first read).
FULL_CHECK_MAX_IMAGES = 5000


class _FittedImageFolder(Dataset):
    """Decodes images lazily and fits them to the model input (large folders stay on disk)."""

    def __init__(self, path: str, input_shape: tuple[int, int, int]) -> None:
        import torchvision.datasets as tvd
        import torchvision.transforms.v2 as T

        c, h, w = input_shape
        steps = [T.ToImage(), T.Resize((h, w), antialias=True)]
        if c == 1:
            steps.append(T.Grayscale(1))
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * c, [0.25] * c)]
        self.folder = tvd.ImageFolder(path, transform=T.Compose(steps))

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.folder[i]
        except Exception as exc:  # noqa: BLE001 - a file that does not decode is the user's data
            raise _unreadable(self.folder.samples[i][0], exc) from None


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


def load_imagefolder(path: str, input_shape: tuple[int, int, int]) -> tuple[Dataset, int]:
    """An ImageFolder (one sub-directory per class, at least two classes) at ``path``.

    Every file is opened before anything trains (decoded fully for folders of up to
    ``FULL_CHECK_MAX_IMAGES`` images): a corrupt image is reported as one line naming it.
    """
    if not Path(path).is_dir():
        raise UserInputError(f"imagefolder path {path!r} is not a directory (expected PATH/<class>/<image>)")
    try:
        ds = _FittedImageFolder(path, input_shape)
    except (FileNotFoundError, RuntimeError) as exc:
        line = " ".join(str(exc).split())[:200]
        raise UserInputError(f"imagefolder {path!r} holds no images in class sub-directories: {line}") from None
    classes = ds.folder.classes
    if len(classes) < 2:
        raise UserInputError(
            f"imagefolder {path!r} has {len(classes)} class ({', '.join(classes)}); a classifier needs "
            "at least 2 class sub-directories"
        )
    files = [f for f, _ in ds.folder.samples]
    _check_images(files, full=len(files) <= FULL_CHECK_MAX_IMAGES)
    return ds, len(classes)
