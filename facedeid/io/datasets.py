"""Face datasets in their *official* layouts, as lists of records (paths first, pixels on demand).

Supported layouts (``layout=`` name in brackets):

* CelebA [``celeba``]: ``img_align_celeba/`` + ``list_attr_celeba.txt`` + ``identity_CelebA.txt``
  + ``list_eval_partition.txt`` (0 train, 1 valid, 2 test), plus the optional
  ``identity_split.txt`` (``file train|test``) of ``celeba-id200``. The full CelebA and the
  subsets under ``../shared/data`` load with the same code.
* FER2013 folders [``fer2013``]: ``{train,validation,test}/<expression>/*.png``
  (validation = PublicTest, test = PrivateTest).
* CK+48 [``ckplus48``]: ``<expression>/S###_###_########.png``; the subject is ``S###``.
* AT&T / ORL [``att``]: ``s1`` ... ``s40`` folders of PGM files (JPEG copies are ignored).
* Yale [``yale``]: GIF files without extension named ``subjectNN.condition``.
* a plain folder of images [``folder``]: recursive, no labels.

Every loader returns a :class:`FaceDataset` of :class:`FaceRecord`; nothing is decoded until
:meth:`FaceRecord.load` is called, so ``--limit`` and split selection cost nothing.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InvalidInputError
from .images import IMAGE_SUFFIXES, read_image

#: Dataset names resolved under the data root (``../shared/data`` or ``--data-root``).
KNOWN_DATASETS = {
    "celeba-id200": "celeba",
    "celeba-first10k": "celeba",
    "fer2013": "fer2013",
    "ckplus48": "ckplus48",
    "att_faces": "att",
    "yalefaces": "yale",
}
LAYOUTS = ("celeba", "fer2013", "ckplus48", "att", "yale", "folder")
CELEBA_PARTITIONS = {"0": "train", "1": "valid", "2": "test"}
FER_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                     "valid": "validation", "val": "validation", "publictest": "validation",
                     "test": "test", "privatetest": "test"}
_CKPLUS_SUBJECT = re.compile(r"^(S\d+)_")
_YALE_NAME = re.compile(r"^(subject\d+)\.([A-Za-z]+)$")


class DatasetError(InvalidInputError):
    """A dataset path that does not exist or does not have the expected layout."""


@dataclass
class FaceRecord:
    """One image of a dataset.

    Attributes:
        path: the image file.
        identity: person id as a string (``None`` where the dataset has none, e.g. FER2013).
        labels: ``{"attributes": {name: bool}}`` for CelebA, ``{"expression": str}`` for
            FER2013/CK+, ``{"condition": str}`` for Yale; empty otherwise.
        split: ``"train"``/``"valid"``/``"test"``/``"validation"`` or ``None``.
    """

    path: Path
    identity: str | None = None
    labels: dict = field(default_factory=dict)
    split: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def load(self) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB pixels (grey and GIF files are converted)."""
        return read_image(self.path).rgb


@dataclass
class FaceDataset:
    """Records plus what the dataset's labels mean."""

    name: str
    root: Path
    layout: str
    records: list[FaceRecord]
    attribute_names: tuple[str, ...] = ()
    split: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[FaceRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> FaceRecord:
        return self.records[index]

    @property
    def identities(self) -> list[str]:
        return sorted({r.identity for r in self.records if r.identity is not None})

    def limited(self, limit: int | None) -> "FaceDataset":
        """The first ``limit`` records (file order), or all of them."""
        if limit is None or limit >= len(self.records):
            return self
        if limit < 0:
            raise ValueError("limit must be >= 0")
        return FaceDataset(self.name, self.root, self.layout, self.records[:limit],
                           self.attribute_names, self.split)


# -- CelebA ------------------------------------------------------------------------------------
def read_identities(root: str | os.PathLike) -> dict[str, str]:
    """``{file name: identity}`` from a CelebA-layout folder's ``identity_CelebA.txt``."""
    path = Path(root) / "identity_CelebA.txt"
    _require(Path(root), [path], "CelebA identities")
    return _read_two_columns(path)


def _read_two_columns(path: Path) -> dict[str, str]:
    table = {}
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{path}:{number}: expected 'file value', got {line.strip()!r}")
            table[parts[0]] = parts[1]
    return table


def read_celeba_attributes(path: Path) -> tuple[tuple[str, ...], dict[str, dict[str, bool]]]:
    """Parse ``list_attr_celeba.txt``: a count line, a header of names, then ``file ±1 ...``."""
    with path.open() as handle:
        handle.readline()  # number of rows (not trusted: subsets keep the official header)
        names = tuple(handle.readline().split())
        if not names:
            raise DatasetError(f"{path}: second line should list the attribute names")
        table = {}
        for number, line in enumerate(handle, 3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise DatasetError(f"{path}:{number}: expected {len(names)} values after the "
                                   f"file name, got {len(parts) - 1}")
            table[parts[0]] = {name: value == "1" for name, value in zip(names, parts[1:])}
    return names, table


def read_celeba_id200_index(root: str | os.PathLike, split_file: str = "identity_split.txt"
                            ) -> list[tuple[str, int, bool]]:
    """``[(file name, identity, is_train)]`` of celeba-id200, in ``split_file`` order.

    From the official ``identity_CelebA.txt`` and one of the subset's split files:
    ``identity_split.txt`` (24 train and 6 test photos of each of 200 people) or
    ``identity_split_disjoint.txt`` (:data:`DISJOINT_SPLIT_FILE`: 160 train people, 40 test
    people never seen in training). Used where one row per face is wanted without the
    attribute table (the surrogate recognizer's training data, k-Same's default gallery).
    """
    root = Path(root)
    _require(root, [root / "identity_CelebA.txt", root / split_file], "celeba-id200")
    identities = _read_two_columns(root / "identity_CelebA.txt")
    rows = []
    for file_name, split in _read_two_columns(root / split_file).items():
        if file_name not in identities:
            raise DatasetError(f"{root / split_file} lists {file_name}, which "
                               "identity_CelebA.txt does not")
        rows.append((file_name, int(identities[file_name]), split == "train"))
    return rows


#: celeba-id200's identity-disjoint split (``file train|test``; test people never trained on)
DISJOINT_SPLIT_FILE = "identity_split_disjoint.txt"


def held_out_identities(id200_root: str | os.PathLike) -> set[str]:
    """The 40 *test* people of celeba-id200's identity-disjoint split, as identity strings.

    Every privacy figure is measured on them, so no model the project trains may see any photo
    of them — including their photos in other CelebA subsets (celeba-first10k holds 60)."""
    return {str(identity) for _, identity, is_train in
            read_celeba_id200_index(id200_root, DISJOINT_SPLIT_FILE) if not is_train}


def first_photo_of_each_held_out_person(id200_root: str | os.PathLike,
                                        count: int | None = None) -> list[Path]:
    """The first photo (by file name) of each of the 40 held-out people, up to ``count``:
    one face per never-seen person, for grids and quick checks."""
    root = Path(id200_root)
    test_people, people = held_out_identities(root), read_identities(root)
    files, seen = [], set()
    for path in sorted((root / "img_align_celeba").glob("*.jpg")):
        person = people.get(path.name)
        if person in test_people and person not in seen:
            seen.add(person)
            files.append(path)
    return files[:count]


def load_celeba(root: str | os.PathLike, split: str | None = None, split_source: str = "auto",
                name: str | None = None) -> FaceDataset:
    """CelebA (full or a subset in the official layout).

    Args:
        split: ``"train"``, ``"valid"``, ``"test"`` or ``None``/``"all"``.
        split_source: ``"identity"`` uses ``identity_split.txt`` (every person in both splits,
            for linking attacks), ``"official"`` uses ``list_eval_partition.txt`` (disjoint
            people), ``"auto"`` prefers ``identity_split.txt`` when it exists,
            ``"disjoint"`` prefers ``identity_split_disjoint.txt`` (celeba-id200: 160 train / 40
            test people, for privacy figures on people no model was trained on) and otherwise
            behaves like ``"auto"``.
    """
    root = Path(root)
    images = root / "img_align_celeba"
    required = [images, root / "list_attr_celeba.txt", root / "identity_CelebA.txt",
                root / "list_eval_partition.txt"]
    _require(root, required, "CelebA")
    names, attributes = read_celeba_attributes(root / "list_attr_celeba.txt")
    identities = _read_two_columns(root / "identity_CelebA.txt")
    identity_split_file = root / "identity_split.txt"
    if split_source == "identity" and not identity_split_file.is_file():
        raise DatasetError(f"{identity_split_file} is missing (split_source='identity' needs it; "
                           "use split_source='official' for list_eval_partition.txt)")
    if split_source not in ("auto", "identity", "official", "disjoint"):
        raise ValueError("split_source must be 'auto', 'identity', 'official' or 'disjoint'")
    if split_source == "disjoint" and (root / DISJOINT_SPLIT_FILE).is_file():
        identity_split_file = root / DISJOINT_SPLIT_FILE
    if split_source != "official" and identity_split_file.is_file():
        splits = _read_two_columns(identity_split_file)
    else:
        splits = {k: CELEBA_PARTITIONS.get(v, v)
                  for k, v in _read_two_columns(root / "list_eval_partition.txt").items()}
    wanted = None if split in (None, "all") else split
    if wanted is not None and wanted not in set(splits.values()):
        raise DatasetError(f"{root}: no images in split {split!r}; this dataset has "
                           f"{sorted(set(splits.values()))}")
    records = []
    for file_name in sorted(attributes):
        record_split = splits.get(file_name)
        if wanted is not None and record_split != wanted:
            continue
        records.append(FaceRecord(images / file_name, identities.get(file_name),
                                  {"attributes": attributes[file_name]}, record_split))
    if not records:
        raise DatasetError(f"{root}: list_attr_celeba.txt lists no images")
    missing = [r.path for r in records[:5] if not r.path.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]} is listed in list_attr_celeba.txt but does not exist; "
                           "is img_align_celeba/ complete?")
    return FaceDataset(name or root.name, root, "celeba", records, names, wanted)


# -- expression folders --------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_fer2013(root: str | os.PathLike, split: str | None = "test",
                 name: str | None = None) -> FaceDataset:
    """FER2013 folders; ``split`` is train / validation (PublicTest) / test (PrivateTest) / all."""
    root = Path(root)
    present = [s for s in ("train", "validation", "test") if (root / s).is_dir()]
    if not present:
        raise DatasetError(f"{root}: not a FER2013 folder (expected train/, validation/ and "
                           "test/ with one sub-folder per expression)")
    if split in (None, "all"):
        chosen = present
    else:
        canonical = FER_SPLIT_ALIASES.get(split.lower())
        if canonical is None or canonical not in present:
            raise DatasetError(f"{root}: no split {split!r}; available: {present}")
        chosen = [canonical]
    records = []
    for split_name in chosen:
        for expression_dir in sorted(p for p in (root / split_name).iterdir() if p.is_dir()):
            for path in _images_in(expression_dir):
                records.append(FaceRecord(path, None, {"expression": expression_dir.name},
                                          split_name))
    if not records:
        raise DatasetError(f"{root}: no images under {', '.join(chosen)}")
    return FaceDataset(name or root.name, root, "fer2013", records,
                       split=None if len(chosen) > 1 else chosen[0])


def load_ckplus48(root: str | os.PathLike, name: str | None = None) -> FaceDataset:
    """CK+48: one folder per expression, subject id ``S###`` from the file name."""
    root = Path(root)
    _require_dir(root)
    records = []
    for expression_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in _images_in(expression_dir):
            match = _CKPLUS_SUBJECT.match(path.name)
            if match is None:
                raise DatasetError(f"{path}: CK+ file names start with the subject (S###_...)")
            records.append(FaceRecord(path, match.group(1), {"expression": expression_dir.name}))
    if not records:
        raise DatasetError(f"{root}: no CK+ images (expected <expression>/S###_*.png)")
    return FaceDataset(name or root.name, root, "ckplus48", records)


# -- identity folders --------------------------------------------------------------------------
def load_att(root: str | os.PathLike, name: str | None = None) -> FaceDataset:
    """AT&T/ORL: ``s1``..``s40`` folders; PGM files preferred over any JPEG copies."""
    root = Path(root)
    _require_dir(root)
    subjects = sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name)),
                      key=lambda p: int(p.name[1:]))
    if not subjects:
        raise DatasetError(f"{root}: not an AT&T folder (expected s1 ... s40 sub-folders)")
    records = []
    for subject in subjects:
        files = _images_in(subject)
        by_stem: dict[str, Path] = {}
        for path in files:  # keep one file per image: the original PGM when both exist
            if path.stem not in by_stem or path.suffix.lower() == ".pgm":
                by_stem[path.stem] = path
        for stem in sorted(by_stem, key=lambda s: (len(s), s)):
            records.append(FaceRecord(by_stem[stem], subject.name))
    return FaceDataset(name or root.name, root, "att", records)


def load_yale(root: str | os.PathLike, name: str | None = None) -> FaceDataset:
    """Yale faces: ``subjectNN.condition`` files (GIF without extension)."""
    root = Path(root)
    _require_dir(root)
    records = []
    for path in sorted(root.iterdir()):
        match = _YALE_NAME.match(path.name)
        if path.is_file() and match:
            records.append(FaceRecord(path, match.group(1), {"condition": match.group(2)}))
    if not records:
        raise DatasetError(f"{root}: no Yale files (expected names like subject01.happy)")
    return FaceDataset(name or root.name, root, "yale", records)


def load_folder(root: str | os.PathLike, name: str | None = None) -> FaceDataset:
    """Any folder of images, walked recursively; no identities or labels."""
    root = Path(root)
    _require_dir(root)
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FaceDataset(name or root.name, root, "folder", [FaceRecord(p) for p in paths])


# -- entry point -------------------------------------------------------------------------------
def default_data_root() -> Path:
    """``$FACEDEID_DATA_ROOT``, else ``../shared/data`` next to the repository."""
    env = os.environ.get("FACEDEID_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def detect_layout(root: Path) -> str:
    """Guess the layout of a folder from the files the official releases contain."""
    if (root / "list_attr_celeba.txt").is_file() or (root / "img_align_celeba").is_dir():
        return "celeba"
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if subdirs & {"train", "validation", "test"}:
        return "fer2013"
    if subdirs and all(re.fullmatch(r"s\d+", s) for s in subdirs):
        return "att"
    if any(_YALE_NAME.match(p.name) for p in root.iterdir() if p.is_file()):
        return "yale"
    for sub in sorted(subdirs):
        files = [p.name for p in (root / sub).iterdir()][:5]
        if files and all(_CKPLUS_SUBJECT.match(f) for f in files):
            return "ckplus48"
    return "folder"


def load_dataset(name_or_path: str | os.PathLike, split: str | None = None,
                 data_root: str | os.PathLike | None = None, limit: int | None = None,
                 layout: str | None = None, split_source: str = "auto") -> FaceDataset:
    """Load a dataset by known name (see :data:`KNOWN_DATASETS`) or by path.

    Args:
        name_or_path: e.g. ``"celeba-id200"`` (looked up under ``data_root``) or a folder.
        split: split to keep (``None``/``"all"``: everything; FER2013 defaults to ``test``).
        data_root: where named datasets live (default :func:`default_data_root`).
        limit: keep the first ``limit`` records of the split.
        layout: force a layout instead of guessing it (one of :data:`LAYOUTS`).
    """
    text = str(name_or_path)
    if text in KNOWN_DATASETS:
        root = Path(data_root) if data_root is not None else default_data_root()
        path = root / text
        if not path.exists():
            raise DatasetError(f"dataset {text!r} not found at {path}; pass --data-root (or set "
                               "FACEDEID_DATA_ROOT) to the folder that holds it, or give a path")
        layout = layout or KNOWN_DATASETS[text]
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: no such dataset folder (known names: "
                               f"{', '.join(KNOWN_DATASETS)})")
        if not path.is_dir():
            raise DatasetError(f"{path}: a dataset must be a folder")
        layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    name = path.name
    if layout == "celeba":
        dataset = load_celeba(path, split, split_source, name)
    elif layout == "fer2013":
        dataset = load_fer2013(path, "test" if split is None else split, name)
    else:
        loader = {"ckplus48": load_ckplus48, "att": load_att, "yale": load_yale,
                  "folder": load_folder}[layout]
        if split not in (None, "all"):
            raise DatasetError(f"{path}: the {layout} layout has no splits (asked for {split!r}); "
                               "use --split all")
        dataset = loader(path, name)
    return dataset.limited(limit)


def default_split(name_or_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> str:
    """``"test"`` for layouts with splits (CelebA, FER2013), ``"all"`` for the others."""
    text = str(name_or_path)
    if text in KNOWN_DATASETS:
        layout = KNOWN_DATASETS[text]
    else:
        path = Path(text).expanduser()
        layout = detect_layout(path) if path.is_dir() else "folder"
    return "test" if layout in ("celeba", "fer2013") else "all"


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: a dataset must be a folder")


def _require(root: Path, paths: list[Path], what: str) -> None:
    _require_dir(root)
    for path in paths:
        if not path.exists():
            raise DatasetError(f"{root} is not a complete {what} folder: {path.name} is missing")
