"""Datasets and binarization.

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``(x,)`` or ``(x, y)``:
images as ``float32`` in ``[0, 1]`` with shape ``(N, 1, 28, 28)`` and labels as ``int64``.
Files are validated as they are parsed: a truncated, corrupted or mislabelled file raises a
:class:`ValueError` naming the file, never a crash deep inside numpy or torch.

Sources:

- the bundled MNIST-10k subset (:func:`load_bundled_mnist`), shipped in the package;
- MNIST and Fashion-MNIST IDX files (:func:`load_mnist`), downloaded by torchvision on
  request;
- Larochelle's fixed binarized MNIST ``.amat`` files (:func:`load_binarized_mnist`);
- generic arrays in ``.npy``, ``.npz`` or ``.pt`` files (:func:`load_tensor_file`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DynamicBinarization",
    "binarize",
    "load_binarized_mnist",
    "load_bundled_mnist",
    "load_digits",
    "load_mnist",
    "load_tensor_file",
    "read_idx",
]

SPLITS = ("train", "valid", "test")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision's folder names below a --data-dir root, used when it downloads.
_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; corruption becomes ValueError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"{path} is corrupted or truncated ({e}); download it again or delete it."
        ) from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes (the MNIST format), gzipped or not.

    :param path: the ``.idx*-ubyte`` or ``.idx*-ubyte.gz`` file.
    :param ndim: the number of dimensions expected (3 for images, 1 for labels).
    :returns: a ``uint8`` tensor of the shape stored in the header.
    :raises ValueError: on a wrong magic number, a dimension mismatch or a size mismatch.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (magic number "
            f"{data[:4].hex() or 'missing'}, expected 0000 08 xx); check the file name."
        )
    file_ndim = data[3]
    if ndim is not None and file_ndim != ndim:
        raise ValueError(
            f"{path} holds a {file_ndim}-dimensional array but {ndim} dimensions were "
            "expected: are the image and label files swapped?"
        )
    header = 4 + 4 * file_ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated inside its header; download it again.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(file_ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(
            f"{path} has {len(data)} bytes but its header {shape} implies {expected}: "
            "the file is truncated or corrupted; download it again."
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def _find(data_dir: Path, stem: str, subdir: str) -> Path | None:
    for folder in (data_dir, data_dir / subdir / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    kind: str = "mnist",
    download: bool = False,
) -> TensorDataset:
    """Load MNIST or Fashion-MNIST from the original IDX files.

    The files (``train-images-idx3-ubyte.gz`` etc., gzipped or not) are looked up in
    ``data_dir`` and in torchvision's layout ``data_dir/MNIST/raw``. With ``download=True``,
    missing files are fetched by :class:`torchvision.datasets.MNIST` (or ``FashionMNIST``).

    :param data_dir: the folder holding the files.
    :param split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    :param kind: ``"mnist"`` or ``"fashion-mnist"``.
    :param download: fetch the files with torchvision when they are missing.
    :returns: ``TensorDataset(x, y)`` with ``x`` float in [0, 1], shape ``(N, 1, 28, 28)``.
    """
    if kind not in _TORCHVISION_CLASSES:
        raise ValueError(f"kind must be one of {sorted(_TORCHVISION_CLASSES)}, got {kind!r}.")
    if split not in _IDX_FILES:
        raise ValueError(
            f"split must be 'train' or 'test' for {kind}, got {split!r} "
            "(take a validation set out of 'train')."
        )
    data_dir = Path(data_dir)
    subdir = _TORCHVISION_CLASSES[kind]
    image_stem, label_stem = _IDX_FILES[split]
    paths = [_find(data_dir, image_stem, subdir), _find(data_dir, label_stem, subdir)]
    if None in paths and download:
        import torchvision

        getattr(torchvision.datasets, subdir)(str(data_dir), train=split == "train", download=True)
        paths = [_find(data_dir, image_stem, subdir), _find(data_dir, label_stem, subdir)]
    if None in paths:
        raise ValueError(
            f"No {kind} {split} files ({image_stem}.gz, {label_stem}.gz) in {data_dir} or "
            f"{data_dir / subdir / 'raw'}. Point --data-dir at the folder holding them, or "
            "pass --download (download=True) to fetch them with torchvision."
        )
    images = read_idx(paths[0], ndim=3)  # type: ignore[arg-type]
    labels = read_idx(paths[1], ndim=1)  # type: ignore[arg-type]
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{paths[0]} holds images of shape {tuple(images.shape)} but {paths[1]} holds "
            f"{labels.shape[0]} labels; the files do not belong together."
        )
    if labels.max() > 9:
        raise ValueError(f"{paths[1]} has label {int(labels.max())}, outside 0..9.")
    return TensorDataset(images.unsqueeze(1).float() / 255.0, labels.long())


def load_binarized_mnist(data_dir: str | os.PathLike, split: str = "train") -> TensorDataset:
    """Load Larochelle's fixed binarization of MNIST (the standard NLL benchmark).

    Reads ``binarized_mnist_{train,valid,test}.amat`` or ``.amat.gz``: one image a line,
    784 values ``0``/``1`` separated by spaces. Splits have 50,000 / 10,000 / 10,000 images.

    :returns: ``TensorDataset(x)`` with binary float ``x`` of shape ``(N, 1, 28, 28)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    data_dir = Path(data_dir)
    name = f"binarized_mnist_{split}.amat"
    path = next((data_dir / n for n in (name + ".gz", name) if (data_dir / n).is_file()), None)
    if path is None:
        raise ValueError(
            f"No {name} or {name}.gz in {data_dir}. The files are distributed by Hugo "
            "Larochelle (binarized_mnist_{train,valid,test}.amat); point --data-dir at "
            "the folder holding them."
        )
    return TensorDataset(_parse_amat(path, _read_bytes(path)))


def _parse_amat(path: Path, data: bytes) -> torch.Tensor:
    line = 784 * 2  # "v v v ... v\n": 784 digits, 783 spaces, one newline
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size and raw.size % line == 0:
        rows = raw.reshape(-1, line)
        digits, seps = rows[:, 0::2], rows[:, 1::2]
        if (
            ((digits == ord("0")) | (digits == ord("1"))).all()
            and (seps[:, :-1] == ord(" ")).all()
            and (seps[:, -1] == ord("\n")).all()
        ):
            x = torch.from_numpy((digits == ord("1")).astype(np.float32))
            return x.reshape(-1, 1, 28, 28)
    # General layout (other whitespace, CRLF): slower but strict.
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text .amat file; download it again.") from None
    rows_list = [r.split() for r in text.splitlines() if r.strip()]
    if not rows_list or any(len(r) != 784 for r in rows_list):
        raise ValueError(
            f"{path} is not a binarized-MNIST .amat file: every line must hold 784 values "
            "(the file may be truncated)."
        )
    try:
        values = np.array(rows_list, dtype=np.float32)
    except ValueError:
        raise ValueError(f"{path} holds non-numeric values; download it again.") from None
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{path} holds values other than 0 and 1; it is not binarized.")
    return torch.from_numpy(values).reshape(-1, 1, 28, 28)


def load_tensor_file(path: str | os.PathLike) -> TensorDataset:
    """Load generic data from ``.npy``, ``.npz`` or ``.pt``.

    - ``.npy``: one array, the data ``x``.
    - ``.npz``: arrays ``x`` and optionally ``y``; a file with a single array uses it as ``x``.
    - ``.pt``: a tensor, or a dict with ``"x"`` and optionally ``"y"``, loaded with
      ``torch.load(weights_only=True)`` (no code from the file is executed).

    :returns: ``TensorDataset(x)`` or ``TensorDataset(x, y)``. Floating-point arrays become
        float32 (the dtype of the models' parameters; NumPy's default is float64), integer
        and boolean arrays keep their dtype.
    :raises ValueError: for a missing or unreadable file, or arrays that are not numbers
        with one row per example.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Data file {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            if "x" not in arrays and len(arrays) == 1:
                arrays = {"x": next(iter(arrays.values()))}
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            arrays = {"x": obj} if isinstance(obj, torch.Tensor) else obj
        else:
            raise ValueError(f"Unsupported data file {path}: use .npy, .npz or .pt.")
    except ValueError:
        raise
    except Exception as e:  # zipfile.BadZipFile, pickle errors, EOFError, OSError ...
        raise ValueError(f"{path} could not be read as {suffix} ({e}); is it corrupted?") from None
    if not isinstance(arrays, dict) or "x" not in arrays:
        raise ValueError(f"{path} must hold an array named 'x' (and optionally 'y').")
    tensors = [_as_tensor(path, "x", arrays["x"])]
    if "y" in arrays:
        y = _as_tensor(path, "y", arrays["y"])
        if y.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"{path}: x has {tensors[0].shape[0]} rows but y has {y.shape[0]}.")
        tensors.append(y)
    return TensorDataset(*tensors)


def _as_tensor(path: Path, name: str, value: object) -> torch.Tensor:
    """One array of a data file as a tensor with a row per example, or a ValueError."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(
                f"{path}: {name} holds {value.dtype} values, not numbers; store numeric arrays."
            )
        if value.ndim == 0:
            raise ValueError(f"{path}: {name} is a single number; it needs one row per example.")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{path}: {name} must be an array (a tensor in .pt files), got {type(value).__name__}."
        )
    if value.dim() == 0:
        raise ValueError(f"{path}: {name} is a single number; it needs one row per example.")
    if value.is_complex():
        raise ValueError(f"{path}: {name} holds complex numbers; store real values.")
    return value.float() if value.is_floating_point() else value


def load_bundled_mnist() -> dict[str, TensorDataset]:
    """The bundled MNIST-10k subset: the first 10,000 MNIST training images, shipped with
    the package (CC BY-SA 3.0, see ``pyro_vae/datasets/README.md``), so nothing is downloaded.

    :returns: ``{"train": 8000, "valid": 1000, "test": 1000}`` images with labels, as
        ``TensorDataset(x, y)`` with ``x`` float in [0, 1], shape ``(N, 1, 28, 28)``.
    """
    folder = resources.files("pyro_vae") / "datasets"
    with resources.as_file(folder / "mnist10k-images-idx3-ubyte.gz") as p:
        images = read_idx(p, ndim=3)
    with resources.as_file(folder / "mnist10k-labels-idx1-ubyte.gz") as p:
        labels = read_idx(p, ndim=1)
    x = images.unsqueeze(1).float() / 255.0
    y = labels.long()
    bounds = {"train": (0, 8000), "valid": (8000, 9000), "test": (9000, 10000)}
    return {k: TensorDataset(x[a:b], y[a:b]) for k, (a, b) in bounds.items()}


def load_digits() -> dict[str, TensorDataset]:
    """The bundled UCI optical handwritten digits (1,797 examples, CC BY 4.0, see
    ``pyro_vae/datasets/README.md``): 64 counts per example, the number of ink pixels in
    each 4×4 block of a 32×32 bitmap, so whole numbers in ``0..16`` (naturally
    Binomial(16)), with the digit as label.

    :returns: ``{"train", "valid", "test"}`` splits of 1,437 / 180 / 180 examples (a fixed
        shuffle), as ``TensorDataset(x, y)`` with integer ``x`` of shape ``(N, 64)``
        (features ``r{row}c{col}``, see :data:`DIGITS_FEATURES`) and labels ``y``.
    """
    with resources.as_file(resources.files("pyro_vae") / "datasets" / "uci-digits.csv.gz") as p:
        table = np.loadtxt(p, delimiter=",", dtype=np.int64)
    x, y = torch.from_numpy(table[:, :64]), torch.from_numpy(table[:, 64])
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    bounds = {"train": (0, 1437), "valid": (1437, 1617), "test": (1617, 1797)}
    return {k: TensorDataset(x[a:b], y[a:b]) for k, (a, b) in bounds.items()}


#: the feature names of :func:`load_digits`: row and column of the 4×4 block
DIGITS_FEATURES = tuple(f"r{r}c{c}" for r in range(8) for c in range(8))


def binarize(x: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
    r"""Static stochastic binarization: :math:`x_i \sim \mathrm{Bernoulli}(p_i)` once.

    :param x: intensities in [0, 1].
    :param seed: seed of the draw (``None`` uses the global RNG).
    :returns: a float tensor of 0s and 1s, the same shape as ``x``.
    """
    if not x.is_floating_point():
        raise ValueError(
            f"binarize needs float intensities in [0, 1], but the data are {x.dtype}; for "
            "8-bit images use x.float() / 255."
        )
    if torch.isnan(x).any():
        raise ValueError("binarize got NaN intensities; remove or impute those examples.")
    if (x < 0).any() or (x > 1).any():
        raise ValueError(
            f"binarize needs intensities in [0, 1], but they range over "
            f"[{x.min().item():g}, {x.max().item():g}]; rescale the data first."
        )
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=gen)


class DynamicBinarization:
    r"""Dynamic binarization: a fresh :math:`x_i \sim \mathrm{Bernoulli}(p_i)` every time a
    batch is drawn, which regularises a Bernoulli VAE on grayscale MNIST.

    Use it as ``fit(..., transform=DynamicBinarization(seed))``. It owns its random
    generator, whose state is saved in checkpoints (``state_dict``), so a resumed run draws
    the same pixels as an uninterrupted one.

    :param seed: seed of the generator.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x, generator=self._gen(x.device))

    def state_dict(self) -> dict[str, object]:
        state = self._generator.get_state() if self._generator is not None else None
        return {"seed": self.seed, "generator": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._pending_state = state["generator"]


Transform = Callable[[torch.Tensor], torch.Tensor]
