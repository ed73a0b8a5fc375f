"""Finding datasets on disk: MVTec AD (and MPDD, same layout), VisA, and plain folders.

Discovery only lists files and checks they exist; it never decodes images, so it stays fast on
large datasets. Mask sizes are checked when masks are read (`read_mask(expected_size=...)`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from anomap.data.images import list_images
from anomap.data.samples import GOOD, Category, Sample
from anomap.errors import DataError

LAYOUTS = ("auto", "mvtec", "visa", "folder")
_ALIASES = {"mpdd": "mvtec"}
_VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_VISA_LABELS = {"normal": GOOD, "anomaly": "anomaly"}
_MASK_DIRS = ("ground_truth", "masks")
_MAX_LISTED = 5

_LAYOUT_SKETCH = """\
  mvtec (also MPDD):
    <root>/<category>/train/good/*.png|jpg
    <root>/<category>/test/<good|defect type>/*.png|jpg
    <root>/<category>/ground_truth/<defect type>/<name>_mask.png
    (or a single category: <root>/train/good/..., <root>/test/..., <root>/ground_truth/...)
  visa:
    <root>/split_csv/1cls.csv   (columns object,split,label,image,mask)
    <root>/<object>/Data/Images/..., <root>/<object>/Data/Masks/...
  folder:
    <root>/*.png|jpg   (or <root>/good/*.png)
    or <root>/train/*.png with optional <root>/test/<good|defect type>/*.png
       and optional masks <root>/test/ground_truth/<defect type>/<name>_mask.png"""


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_name(folder: Path) -> str:
    """Folder name even for paths like "." or "data/"."""
    return folder.resolve().name


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"dataset path is not a folder: {root}")
    return root


def _find_mask(mask_dirs: Sequence[Path], defect_type: str, image: Path) -> Path | None:
    for candidate in _mask_candidates(mask_dirs, defect_type, image):
        if candidate.is_file():
            return candidate
    return None


def _mask_candidates(mask_dirs: Sequence[Path], defect_type: str, image: Path) -> list[Path]:
    """`<stem>_mask.png` is MVTec's naming; `<stem>.png` is what MPDD variants and tools use."""
    return [
        d / defect_type / name
        for d in mask_dirs
        for name in (f"{image.stem}_mask.png", f"{image.stem}.png")
    ]


def _sorted(samples: Iterable[Sample]) -> tuple[Sample, ...]:
    return tuple(sorted(samples, key=lambda s: s.path))


def _train_samples(folder: Path, category: str, expected: str) -> tuple[Sample, ...]:
    images = list_images(folder) if folder.is_dir() else []
    if not images:
        raise DataError(
            f"no training images in {folder} (category {category!r}); expected {expected}"
        )
    return tuple(Sample(path=p, category=category) for p in images)


# ---------------------------------------------------------------- layout detection


def _mvtec_category_dirs(root: Path) -> dict[str, Path]:
    """A root that is itself one category, or the sub-folders that are categories."""
    if (root / "train" / GOOD).is_dir():
        return {_folder_name(root): root}
    return {d.name: d for d in _visible_dirs(root) if (d / "train" / GOOD).is_dir()}


def _folder_dirs(root: Path) -> tuple[Path, Path | None]:
    """(train_dir, test_dir) of a plain-folder dataset rooted at `root`."""
    train = root / "train"
    test = root / "test"
    return (train if train.is_dir() else root), (test if test.is_dir() else None)


def _train_image_dir(train_dir: Path) -> Path:
    good = train_dir / GOOD
    return good if good.is_dir() else train_dir


def detect_layout(root: str | Path) -> str:
    """Name the layout at `root` ("visa", "mvtec" or "folder") from the files present."""
    root = _check_root(root)
    if (root / _VISA_CSV).is_file():
        return "visa"
    if _mvtec_category_dirs(root):
        return "mvtec"
    train_dir, _ = _folder_dirs(root)
    if list_images(_train_image_dir(train_dir)):
        return "folder"
    raise DataError(
        f"cannot tell the dataset layout of {root}: found no VisA split csv, no MVTec "
        f"'train/good' folder and no images. Expected one of:\n{_LAYOUT_SKETCH}"
    )


# ---------------------------------------------------------------- MVTec AD / MPDD


def _mvtec_test_samples(category_dir: Path, category: str) -> tuple[Sample, ...]:
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        return ()
    mask_dirs = [category_dir / "ground_truth"]
    samples: list[Sample] = []
    unmasked: list[Sample] = []
    for type_dir in _visible_dirs(test_dir):
        defect_type = type_dir.name
        for image in list_images(type_dir):
            mask = None if defect_type == GOOD else _find_mask(mask_dirs, defect_type, image)
            sample = Sample(image, category, defect_type, mask)
            (unmasked if sample.label and mask is None else samples).append(sample)
    if unmasked:
        first = unmasked[0]
        looked = " or ".join(
            str(p) for p in _mask_candidates(mask_dirs, first.defect_type, first.path)
        )
        raise DataError(
            f"{len(unmasked)} defective test image(s) of category {category!r} have no mask; "
            f"the MVTec layout needs one per defective image. First: {first.path} "
            f"(looked for {looked}). Use layout 'folder' if your dataset has no masks."
        )
    return _sorted(samples)


def _mvtec_category(category_dir: Path, name: str) -> Category:
    train = _train_samples(category_dir / "train" / GOOD, name, "<category>/train/good/*.png|jpg")
    return Category(name, "mvtec", train, _mvtec_test_samples(category_dir, name))


def _mvtec_categories(root: Path, wanted: Sequence[str] | None) -> list[Category]:
    dirs = _mvtec_category_dirs(root)
    if not dirs:
        raise DataError(
            f"no MVTec categories in {root}: no '<category>/train/good' folder. "
            f"Expected:\n{_LAYOUT_SKETCH}"
        )
    return [_mvtec_category(dirs[n], n) for n in _select(sorted(dirs), wanted, root)]


# ---------------------------------------------------------------- VisA


def _read_visa_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise DataError(f"VisA split file not found: {csv_path}; expected:\n{_LAYOUT_SKETCH}")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"VisA split file {csv_path} lacks column(s) {', '.join(missing)}; "
                    f"expected header {','.join(_VISA_COLUMNS)}"
                )
            return [
                {(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read VisA split file {csv_path}: {exc}") from exc


def _visa_sample(root: Path, row: dict[str, str], line: int, csv_path: Path) -> Sample:
    label = row["label"]
    if label not in _VISA_LABELS:
        raise DataError(
            f"{csv_path} line {line}: label {label!r} is neither 'normal' nor 'anomaly'"
        )
    defect_type = _VISA_LABELS[label]
    if defect_type != GOOD and not row["mask"]:
        raise DataError(f"{csv_path} line {line}: anomalous image {row['image']} has no mask")
    mask = None if defect_type == GOOD else root / row["mask"]
    return Sample(root / row["image"], row["object"], defect_type, mask)


def _check_exist(samples: Iterable[Sample], root: Path, csv_path: Path) -> None:
    missing = [
        p for s in samples for p in (s.path, s.mask_path) if p is not None and not p.is_file()
    ]
    if missing:
        shown = ", ".join(str(p) for p in missing[:_MAX_LISTED])
        raise DataError(
            f"{len(missing)} file(s) listed in {csv_path} are missing (paths are relative to "
            f"{root}): {shown}" + (" ..." if len(missing) > _MAX_LISTED else "")
        )


def _visa_categories(root: Path, wanted: Sequence[str] | None) -> list[Category]:
    csv_path = root / _VISA_CSV
    rows = _read_visa_rows(csv_path)
    names = sorted({row["object"] for row in rows if row["object"]})
    selected = _select(names, wanted, root)
    by_name: dict[str, tuple[list[Sample], list[Sample]]] = {n: ([], []) for n in selected}
    for line, row in enumerate(rows, start=2):
        if row["object"] not in by_name:
            continue
        if row["split"] not in ("train", "test"):
            raise DataError(
                f"{csv_path} line {line}: split {row['split']!r} is neither 'train' nor 'test'"
            )
        sample = _visa_sample(root, row, line, csv_path)
        train, test = by_name[row["object"]]
        if row["split"] == "test":
            test.append(sample)
        elif sample.defect_type == GOOD:
            train.append(sample)
    _check_exist((s for pair in by_name.values() for part in pair for s in part), root, csv_path)
    categories = []
    for name, (train, test) in by_name.items():
        if not train:
            raise DataError(
                f"no training images for VisA object {name!r} in {csv_path}; expected rows "
                "with split=train and label=normal"
            )
        categories.append(Category(name, "visa", _sorted(train), _sorted(test)))
    return categories


# ---------------------------------------------------------------- plain folders


def _folder_test_samples(test_dir: Path, category: str) -> tuple[Sample, ...]:
    if not test_dir.is_dir():
        raise DataError(f"test folder not found: {test_dir}")
    if list_images(test_dir):
        raise DataError(
            f"test folder {test_dir} has images directly inside; put normal images in "
            f"{test_dir / GOOD} and defective ones in one sub-folder per defect type"
        )
    subdirs = _visible_dirs(test_dir)
    mask_dirs = [d for d in subdirs if d.name in _MASK_DIRS]
    samples = []
    for type_dir in subdirs:
        if type_dir in mask_dirs:
            continue
        defect_type = type_dir.name
        for image in list_images(type_dir):
            mask = None if defect_type == GOOD else _find_mask(mask_dirs, defect_type, image)
            samples.append(Sample(image, category, defect_type, mask))
    return _sorted(samples)


def discover_folder(
    train_dir: str | Path, test_dir: str | Path | None = None, *, name: str | None = None
) -> Category:
    """Category from plain folders: normal images in `train_dir` (or its `good/`), and an
    optional `test_dir` with `good/`, one folder per defect type, and optional masks in
    `ground_truth/` or `masks/`. `name` defaults to the train folder's name."""
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise DataError(f"training folder not found: {train_dir}")
    name = name or _folder_name(train_dir)
    train = _train_samples(
        _train_image_dir(train_dir), name, "normal images in <train>/*.png or <train>/good/*.png"
    )
    test = _folder_test_samples(Path(test_dir), name) if test_dir is not None else ()
    return Category(name, "folder", train, test)


# ---------------------------------------------------------------- entry point


def _select(names: Sequence[str], wanted: Sequence[str] | None, root: Path) -> list[str]:
    """Filter categories by name, failing on unknown names so typos are not silently empty."""
    if not wanted:
        return list(names)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise DataError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} in "
            f"{root}; available: {', '.join(names) or '(none)'}"
        )
    return [n for n in names if n in wanted]


def _normalise_layout(layout: str) -> str:
    key = layout.lower()
    key = _ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise DataError(
            f"unknown dataset layout {layout!r}; expected one of "
            f"{', '.join(LAYOUTS + tuple(_ALIASES))}"
        )
    return key


def discover(
    root: str | Path, layout: str = "auto", categories: str | Sequence[str] | None = None
) -> list[Category]:
    """Categories of the dataset at `root`, sorted by name. `categories` keeps only those names
    (None or empty keeps all); "mpdd" is accepted as an alias of "mvtec"."""
    root = _check_root(root)
    wanted = [categories] if isinstance(categories, str) else categories
    key = _normalise_layout(layout)
    if key == "auto":
        key = detect_layout(root)
    if key == "visa":
        return _visa_categories(root, wanted)
    if key == "mvtec":
        return _mvtec_categories(root, wanted)
    train_dir, test_dir = _folder_dirs(root)
    name = _folder_name(root)
    _select([name], wanted, root)
    return [discover_folder(train_dir, test_dir, name=name)]
