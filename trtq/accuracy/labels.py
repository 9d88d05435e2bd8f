"""Ground-truth labels for evaluation data, lined up with the samples a data source really fed.

Three ways to give labels (``--labels FILE`` or ``--labels-from-folders``):

* ``.npy`` of integers, one per sample *in data order*: the order of the whole source before
  ``--max-samples``/``--seed`` pick from it (array rows; image files sorted by relative path; the
  batches a data-loader script yields);
* ``.csv`` with ``file,label`` rows (header optional) for an image folder, ``file`` relative to the
  ``--data`` folder as trtq lists it (POSIX separators), e.g. ``calib_data/mnist/labels.csv``;
* class sub-folders of an image folder (``root/<class>/image.png``): the class is the first path
  component, its index the folder name itself when every folder name is a non-negative integer,
  otherwise the folder's position among the sorted names (torchvision's ImageFolder convention).

Which samples were fed is known only after the data has been read (undecodable images are
skipped while reading, a fixed batch drops a partial last batch), so labels are matched at the end
of a pass by :func:`labels_for_fed`; any mismatch is a one-line :class:`TrtqError`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtq.data import ArraySource, BatchSource, ImageFolderSource
from trtq.errors import TrtqError
from trtq.fileio import read_input_bytes, read_input_text


@dataclass(frozen=True)
class Labels:
    """Labels by sample position in data order (``by_index``) or by image file (``by_file``)."""

    origin: str
    by_index: np.ndarray | None = None
    by_file: dict[str, int] | None = None
    from_folders: bool = False


def read_labels(path: str | os.PathLike | None, from_folders: bool = False) -> Labels | None:
    """Read and check a labels file (or note that labels come from class sub-folders)."""
    if path is not None and from_folders:
        raise TrtqError("give either --labels FILE or --labels-from-folders, not both")
    if from_folders:
        return Labels("class sub-folders", from_folders=True)
    if path is None:
        return None
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".npy":
        return Labels(str(file), by_index=_read_npy(file))
    if suffix == ".csv":
        return Labels(str(file), by_file=_read_csv(file))
    raise TrtqError(f"--labels {file}: expected a .npy of integer labels or a .csv of file,label rows")


def _read_npy(file: Path) -> np.ndarray:
    data = read_input_bytes(file, "labels file")
    try:
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TrtqError(f"cannot read labels {file} as a .npy file ({type(exc).__name__})") from exc
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.size == 0:
        raise TrtqError(f"labels {file}: expected a 1-D array of integer labels, got shape {list(values.shape)}")
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu":
        raise TrtqError(f"labels {file}: expected integer class labels, got {values.dtype}")
    return values.astype(np.int64)


def _read_csv(file: Path) -> dict[str, int]:
    text = read_input_text(file, "labels file")
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row and any(cell.strip() for cell in row)]
    if rows and not _is_int(rows[0][1] if len(rows[0]) > 1 else ""):  # a header line
        rows = rows[1:]
    mapping: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not _is_int(row[1]):
            raise TrtqError(f"labels {file}: row {number} is not 'file,label' with an integer label: {row}")
        name = row[0].strip().replace("\\", "/")
        if name in mapping and mapping[name] != int(row[1]):
            raise TrtqError(f"labels {file}: '{name}' is listed twice with different labels")
        mapping[name] = int(row[1])
    if not mapping:
        raise TrtqError(f"labels {file} holds no file,label rows")
    return mapping


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _folder_classes(files: list[str]) -> dict[str, int]:
    """Class index per top-level sub-folder name."""
    names = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if all(n.isdecimal() for n in names):  # what int() reads (isdigit() also takes e.g. superscripts)
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names)}


def check_labels(labels: Labels, source: BatchSource | None) -> None:
    """What can be checked before the data is read: label counts, files without a label, layout."""
    if isinstance(source, ImageFolderSource):
        if labels.by_file is not None:
            missing = [f for f in source.files if f not in labels.by_file]
            if missing:
                raise TrtqError(f"labels {labels.origin} have no row for {missing[0]} "
                                f"({len(missing)} of the {len(source.files)} images have none)")
        elif labels.from_folders:
            loose = [f for f in source.files if "/" not in f]
            if loose:
                raise TrtqError(f"--labels-from-folders: {source.root / loose[0]} is not inside a class sub-folder")
        elif len(labels.by_index) != source.files_found:
            raise TrtqError(f"labels {labels.origin} hold {len(labels.by_index)} labels but {source.root} holds "
                            f"{source.files_found} images; give one label per image, in sorted path order")
    elif labels.by_index is None:
        kind = "class sub-folders" if labels.from_folders else "a file,label CSV"
        raise TrtqError(f"{kind} label an image folder; for arrays or a data loader script give --labels "
                        "as a .npy of integer labels in data order")
    elif isinstance(source, ArraySource) and len(labels.by_index) != source.samples_found:
        raise TrtqError(f"labels {labels.origin} hold {len(labels.by_index)} labels but {source.path} holds "
                        f"{source.samples_found} samples; give one label per sample, in data order")


def labels_for_fed(labels: Labels, source: BatchSource | None, fed: int) -> np.ndarray:
    """The labels of the first ``fed`` samples the source yielded in its last pass, in feed order."""
    check_labels(labels, source)
    if isinstance(source, ImageFolderSource):
        return _image_labels(labels, source, fed)
    if isinstance(source, ArraySource):
        return labels.by_index[source.selected[:fed]]
    if len(labels.by_index) < fed:  # a data loader script (or plain batches): labels follow the order fed
        raise TrtqError(f"labels {labels.origin} hold {len(labels.by_index)} labels but {fed} samples were fed")
    return labels.by_index[:fed]


def _image_labels(labels: Labels, source: ImageFolderSource, fed: int) -> np.ndarray:
    skipped = source.skipped_files
    positions = [p for p in source.selected if source.listing[p] not in skipped][:fed]
    if len(positions) < fed:
        raise TrtqError(f"{fed} samples were fed but only {len(positions)} images are known; "
                        "labels cannot be lined up")
    files = [source.listing[p] for p in positions]
    if labels.from_folders:
        classes = _folder_classes(source.listing)
        return np.array([classes[f.split("/", 1)[0]] for f in files], dtype=np.int64)
    if labels.by_file is not None:
        return np.array([labels.by_file[f] for f in files], dtype=np.int64)
    return labels.by_index[positions]
