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
- the bundled UCI digits, a small count table (:func:`load_digits`);
- generic arrays in ``.npy``, ``.npz`` or ``.pt`` files and tables in ``.csv`` files
  (:func:`load_tensor_file`), with feature names where the file has them
  (:class:`TableDataset`).

:class:`Standardization` is the per-feature standardisation of a table (fitted on the
training split) that the normal likelihood's runs use.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = [
    "DIGITS_FEATURES",
    "DynamicBinarization",
    "Standardization",
    "TableDataset",
    "binarize",
    "check_feature_names",
    "feature_names_of",
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


class TableDataset(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` whose data columns have names.

    :param tensors: ``x`` (one row per example) and optionally ``y``.
    :param feature_names: one name per column of ``x`` (``x`` of shape ``(N, D)``), or
        ``None``; checked by :func:`check_feature_names`.
    """

    def __init__(self, *tensors: torch.Tensor, feature_names: Any = None) -> None:
        super().__init__(*tensors)
        self.feature_names: tuple[str, ...] | None = None
        if feature_names is not None:
            self.feature_names = check_feature_names(feature_names, tuple(tensors[0].shape[1:]))

    def subset(self, index: torch.Tensor | slice) -> TableDataset:
        """The rows ``index`` of every tensor, with the same feature names."""
        return TableDataset(*(t[index] for t in self.tensors), feature_names=self.feature_names)


def feature_names_of(dataset: Any) -> tuple[str, ...] | None:
    """The feature names a dataset carries (a :class:`TableDataset`), else ``None``."""
    return getattr(dataset, "feature_names", None)


def check_feature_names(
    names: Any, item_shape: tuple[int, ...], source: str = ""
) -> tuple[str, ...]:
    """Return ``names`` as a tuple of strings if they can name the columns of data whose
    items have shape ``item_shape`` (one non-empty, unique name per column of ``(N, D)``
    data; no commas, quotes or line breaks, since the names head CSV files), else raise
    :class:`ValueError` naming the problem."""
    where = f"{source}: " if source else ""
    if isinstance(names, np.ndarray):
        if names.dtype.kind not in "US" or names.ndim != 1:
            raise ValueError(
                f"{where}feature_names must be a 1-D array of strings, got {names.dtype} "
                f"of shape {names.shape}."
            )
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}feature_names must be a sequence of strings.")
    names = tuple(names)
    if len(item_shape) != 1:
        raise ValueError(
            f"{where}feature names name the columns of a table, but the items have shape "
            f"{item_shape}; store x as an (N, D) array or drop the names."
        )
    if len(names) != item_shape[0]:
        raise ValueError(
            f"{where}{len(names)} feature names for {item_shape[0]} columns; give one name "
            "per column."
        )
    for name in names:
        if not name.strip() or any(c in name for c in ',"\n\r'):
            raise ValueError(
                f"{where}feature name {name!r} is empty or holds a comma, a quote or a line "
                "break; the names head CSV files, so rename the column."
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}feature name {name!r} occurs twice; names must be unique.")
        seen.add(name)
    return names


def load_tensor_file(path: str | os.PathLike) -> TableDataset:
    """Load generic data from ``.npy``, ``.npz``, ``.pt`` or ``.csv`` (``.csv.gz``).

    - ``.npy``: one array, the data ``x``.
    - ``.npz``: arrays ``x``, optionally ``y`` and ``feature_names`` (strings, one per
      column of ``x``); a file with a single data array uses it as ``x``.
    - ``.pt``: a tensor, or a dict with ``"x"`` and optionally ``"y"`` and
      ``"feature_names"`` (a list of strings), loaded with ``torch.load(weights_only=True)``
      (no code from the file is executed).
    - ``.csv``: a table, one example per line, every column a feature (no labels), comma
      separated. The first line is a **header** of feature names when at least one of its
      fields is not a number, and data otherwise; so a header made only of numbers
      (``1990,1991``) is read as a row of data: name such columns with a letter, or use
      ``.npz`` with ``feature_names``. Values written as whole numbers without a decimal
      point or exponent in every cell (``0,3,12``) are read as ``int64`` counts; any other
      number makes the whole table ``float32``.

    :returns: a :class:`TableDataset` of ``(x,)`` or ``(x, y)``, with the feature names
        the file holds (else ``None``). Floating-point arrays become float32 (the dtype
        of the models' parameters; NumPy's default is float64), integer and boolean
        arrays keep their dtype.
    :raises ValueError: for a missing or unreadable file, arrays that are not numbers
        with one row per example, or feature names that do not fit the columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Data file {path} does not exist.")
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    suffix = path.suffix.lower()
    if suffixes[-2:] == [".csv", ".gz"] or suffix == ".csv":
        x, csv_names = _read_csv(path)
        return TableDataset(_as_tensor(path, "x", x), feature_names=csv_names)
    names: Any = None
    try:
        if suffix == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            names = arrays.pop("feature_names", None)
            if "x" not in arrays and len(arrays) == 1:
                arrays = {"x": next(iter(arrays.values()))}
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            arrays = {"x": obj} if isinstance(obj, torch.Tensor) else obj
            if isinstance(arrays, dict):
                arrays = dict(arrays)
                names = arrays.pop("feature_names", None)
        else:
            raise ValueError(f"Unsupported data file {path}: use .npy, .npz, .pt or .csv.")
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
    if names is not None:
        names = check_feature_names(names, tuple(tensors[0].shape[1:]), str(path))
    return TableDataset(*tensors, feature_names=names)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """The values and the header (if any) of a CSV table; see :func:`load_tensor_file`."""
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file; save the table as CSV.") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(f.strip() for f in r)]
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    first = [f.strip() for f in rows[0]]
    names = None
    if not all(_is_number(f) for f in first):
        names = check_feature_names(first, (len(first),), str(path))
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{path} has a header but no rows of data.")
    width = len(first)
    start = 2 if names is not None else 1
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"{path}, line {start + i}: {len(row)} fields where the first line has "
                f"{width}; every row needs one value per column."
            )
    cells = np.char.strip(np.array(rows, dtype=str))
    whole = np.char.isdigit(np.char.lstrip(cells, "+-"))
    try:
        values = cells.astype(np.float64)
    except ValueError:
        bad = next((r, c) for r, c in np.argwhere(~whole) if not _is_number(str(cells[r, c])))
        raise ValueError(
            f"{path}, line {start + int(bad[0])}, column {int(bad[1]) + 1}: "
            f"{str(cells[bad[0], bad[1]])!r} is not a number; a data file holds numbers only "
            "(drop label or text columns)."
        ) from None
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(
            f"{path}, line {start + int(r)}, column {int(c) + 1}: {str(cells[r, c])!r} is not a "
            "finite number; remove or impute missing values."
        )
    if whole.all():
        return values.astype(np.int64), names
    return values, names


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


def load_digits() -> dict[str, TableDataset]:
    """The bundled UCI optical handwritten digits (1,797 examples, CC BY 4.0, see
    ``pyro_vae/datasets/README.md``): 64 counts per example, the number of ink pixels in
    each 4×4 block of a 32×32 bitmap, so whole numbers in ``0..16`` (naturally
    Binomial(16)), with the digit as label.

    :returns: ``{"train", "valid", "test"}`` splits of 1,437 / 180 / 180 examples (a fixed
        shuffle), as :class:`TableDataset` ``(x, y)`` with integer ``x`` of shape
        ``(N, 64)``, labels ``y`` and the feature names ``r{row}c{col}``
        (:data:`DIGITS_FEATURES`).
    """
    with resources.as_file(resources.files("pyro_vae") / "datasets" / "uci-digits.csv.gz") as p:
        table = np.loadtxt(p, delimiter=",", dtype=np.int64)
    x, y = torch.from_numpy(table[:, :64]), torch.from_numpy(table[:, 64])
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    bounds = {"train": (0, 1437), "valid": (1437, 1617), "test": (1617, 1797)}
    return {
        k: TableDataset(x[a:b], y[a:b], feature_names=DIGITS_FEATURES)
        for k, (a, b) in bounds.items()
    }


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


class Standardization(nn.Module):
    r"""Per-feature standardisation :math:`u = (x - m) / s` and its inverse
    :math:`x = m + s\,u`, with :math:`m` and :math:`s` the mean and the standard deviation
    (divisor :math:`N`) of each feature over the **training** split alone, then applied
    unchanged to every split and to everything the model generates.

    A feature that is constant in the training split (:math:`s = 0`) keeps :math:`s = 1`,
    so it is only shifted. ``loc`` and ``scale`` are buffers: they travel with the model's
    state (checkpoints) and its device.

    :param loc: :math:`m`, shape of one item.
    :param scale: :math:`s > 0`, the same shape.
    """

    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        loc = torch.as_tensor(loc, dtype=torch.float32)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if loc.shape != scale.shape:
            raise ValueError(f"loc has shape {tuple(loc.shape)} but scale {tuple(scale.shape)}.")
        if not bool(torch.isfinite(loc).all()) or not bool((scale > 0).all()):
            raise ValueError("Standardization needs finite loc and scale > 0.")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardization:
        """The standardisation of the training data ``x`` (one row per example)."""
        if x.shape[0] < 2:
            raise ValueError(
                f"Standardisation needs at least 2 training examples, got {x.shape[0]}."
            )
        values = x.double()
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                "The training data hold NaN or infinite values; remove or impute them "
                "before standardising."
            )
        loc = values.mean(0)
        scale = values.std(0, correction=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return cls(loc.float(), scale.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise: :math:`(x - m) / s`."""
        return (x - self.loc) / self.scale

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        r"""Back to the data's units: :math:`m + s\,u`."""
        return self.loc + self.scale * u
