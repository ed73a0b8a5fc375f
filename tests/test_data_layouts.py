"""Dataset discovery: MVTec AD / MPDD, VisA and plain folders, with clear errors when wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomap.data.layouts import detect_layout, discover, discover_folder
from anomap.data.samples import GOOD
from anomap.errors import DataError


def _img(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 80, 120)).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(size[::-1], dtype=np.uint8)
    arr[2:5, 3:7] = 255
    Image.fromarray(arr).save(path)
    return path


def _mvtec_category(cat: Path, ext: str = "png", mask_suffix: str = "_mask") -> Path:
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.{ext}")
    _img(cat / "test" / "good" / f"000.{ext}")
    for defect in ("crack", "scratch"):
        for i in range(2):
            _img(cat / "test" / defect / f"{i:03d}.{ext}")
            _mask(cat / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png")
    return cat


def _visa(root: Path, objects: tuple[str, ...] = ("candle", "pcb1")) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in objects:
        base = Path(obj) / "Data"
        for i in range(2):
            rel = base / "Images" / "Normal" / f"{i:04d}.JPG"
            _img(root / rel)
            rows.append(f"{obj},train,normal,{rel},")
        rel = base / "Images" / "Normal" / "0009.JPG"
        _img(root / rel)
        rows.append(f"{obj},test,normal,{rel},")
        rel, mrel = base / "Images" / "Anomaly" / "000.JPG", base / "Masks" / "Anomaly" / "000.png"
        _img(root / rel)
        _mask(root / mrel)
        rows.append(f"{obj},test,anomaly,{rel},{mrel}")
        rel = base / "Images" / "Anomaly" / "001.JPG"
        _img(root / rel)
        rows.append(f"{obj},train,anomaly,{rel},{base / 'Masks' / 'Anomaly' / '001.png'}")
        _mask(root / base / "Masks" / "Anomaly" / "001.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


# ---------------------------------------------------------------- MVTec / MPDD


def test_mvtec_multi_category(tmp_path):
    _mvtec_category(tmp_path / "screw")
    _mvtec_category(tmp_path / "bottle")
    (tmp_path / "license.txt").write_text("x")
    (tmp_path / "notes").mkdir()  # a folder without train/good is not a category
    assert detect_layout(tmp_path) == "mvtec"
    cats = discover(tmp_path)
    assert [c.name for c in cats] == ["bottle", "screw"]
    bottle = cats[0]
    assert bottle.layout == "mvtec" and len(bottle.train) == 3 and len(bottle.test) == 5
    assert all(s.defect_type == GOOD and s.label == 0 for s in bottle.train)
    assert [s.path for s in bottle.test] == sorted(s.path for s in bottle.test)
    crack = [s for s in bottle.test if s.defect_type == "crack"]
    assert crack[0].label == 1
    assert crack[0].mask_path == tmp_path / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    good = [s for s in bottle.test if s.defect_type == GOOD]
    assert len(good) == 1 and good[0].mask_path is None and bottle.has_masks


def test_mvtec_single_category_root(tmp_path):
    cat = _mvtec_category(tmp_path / "bottle")
    assert detect_layout(cat) == "mvtec"
    (only,) = discover(cat)
    assert only.name == "bottle" and len(only.test) == 5


def test_mpdd_alias_jpg_and_stem_mask_fallback(tmp_path):
    _mvtec_category(tmp_path / "tubes", ext="jpg", mask_suffix="")
    (cat,) = discover(tmp_path, layout="MPDD")
    assert cat.layout == "mvtec"
    assert all(s.path.suffix == ".jpg" for s in cat.train + cat.test)
    defects = [s for s in cat.test if s.label]
    assert len(defects) == 4
    assert all(
        s.mask_path is not None and s.mask_path.name == f"{s.path.stem}.png" for s in defects
    )


def test_mvtec_missing_mask_names_image_and_paths(tmp_path):
    cat = _mvtec_category(tmp_path / "bottle")
    (cat / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    msg = str(info.value)
    assert "1 defective test image(s)" in msg and "'bottle'" in msg and "no mask" in msg
    assert str(cat / "test" / "scratch" / "001.png") in msg
    assert str(cat / "ground_truth" / "scratch" / "001_mask.png") in msg
    assert str(cat / "ground_truth" / "scratch" / "001.png") in msg
    assert "layout 'folder'" in msg


def test_mvtec_train_only_category(tmp_path):
    for i in range(2):
        _img(tmp_path / "plate" / "train" / "good" / f"{i}.png")
    (cat,) = discover(tmp_path)
    assert len(cat.train) == 2 and cat.test == () and not cat.has_masks


def test_mvtec_empty_train(tmp_path):
    _mvtec_category(tmp_path / "bottle")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no training images in .*empty.train.good .*'empty'"):
        discover(tmp_path)
    assert [c.name for c in discover(tmp_path, categories=["bottle"])] == ["bottle"]


def test_explicit_mvtec_without_categories(tmp_path):
    _img(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"no MVTec categories in .*train/good"):
        discover(tmp_path, layout="mvtec")


# ---------------------------------------------------------------- category filter


def test_category_filter(tmp_path):
    for name in ("bottle", "cable", "screw"):
        _mvtec_category(tmp_path / name)
    assert [c.name for c in discover(tmp_path, categories=["screw", "bottle"])] == [
        "bottle",
        "screw",
    ]
    assert [c.name for c in discover(tmp_path, categories="cable")] == ["cable"]
    assert len(discover(tmp_path, categories=[])) == 3


def test_unknown_category_lists_available(tmp_path):
    for name in ("bottle", "screw"):
        _mvtec_category(tmp_path / name)
    with pytest.raises(DataError, match=r"unknown category botle .*available: bottle, screw"):
        discover(tmp_path, categories=["botle"])


def test_filter_skips_broken_other_categories(tmp_path):
    _mvtec_category(tmp_path / "bottle")
    broken = _mvtec_category(tmp_path / "screw")
    (broken / "ground_truth" / "crack" / "000_mask.png").unlink()
    assert [c.name for c in discover(tmp_path, categories=["bottle"])] == ["bottle"]


# ---------------------------------------------------------------- VisA


def test_visa(tmp_path):
    _visa(tmp_path)
    assert detect_layout(tmp_path) == "visa"
    cats = discover(tmp_path)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    candle = cats[0]
    assert candle.layout == "visa"
    # train = split train AND normal: the anomalous train row is left out
    assert [s.path.name for s in candle.train] == ["0000.JPG", "0001.JPG"]
    assert len(candle.test) == 2
    anomaly = [s for s in candle.test if s.label]
    assert len(anomaly) == 1 and anomaly[0].defect_type == "anomaly"
    assert anomaly[0].mask_path == tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    normal = [s for s in candle.test if not s.label]
    assert normal[0].defect_type == GOOD and normal[0].mask_path is None
    assert [c.name for c in discover(tmp_path, layout="visa", categories=["pcb1"])] == ["pcb1"]


def test_visa_missing_columns(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,a.JPG\n")
    with pytest.raises(DataError, match=r"1cls\.csv lacks column\(s\) label, mask"):
        discover(tmp_path)


def test_visa_missing_files(tmp_path):
    _visa(tmp_path)
    for i in range(2):
        (tmp_path / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG").unlink()
    (tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    msg = str(info.value)
    assert "3 file(s) listed in" in msg and "1cls.csv are missing" in msg
    assert "0000.JPG" in msg and "000.png" in msg
    # only the selected objects are checked
    assert [c.name for c in discover(tmp_path, categories=["pcb1"])] == ["pcb1"]


def test_visa_bad_label_and_missing_mask(tmp_path):
    _visa(tmp_path, objects=("candle",))
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("test,anomaly", "test,broken"))
    with pytest.raises(DataError, match=r"1cls\.csv line 5: label 'broken' is neither"):
        discover(tmp_path)
    csv_path.write_text(text.replace("candle/Data/Masks/Anomaly/000.png", ""))
    with pytest.raises(DataError, match=r"line 5: anomalous image .*000\.JPG has no mask"):
        discover(tmp_path)


def test_visa_explicit_without_csv(tmp_path):
    _img(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"VisA split file not found: .*1cls\.csv"):
        discover(tmp_path, layout="visa")


# ---------------------------------------------------------------- plain folders


def test_folder_flat_images(tmp_path):
    root = tmp_path / "widgets"
    for i in range(3):
        _img(root / f"{i}.jpg")
    assert detect_layout(root) == "folder"
    (cat,) = discover(root)
    assert cat.name == "widgets" and cat.layout == "folder"
    assert len(cat.train) == 3 and cat.test == ()


def test_folder_train_test_with_optional_masks(tmp_path):
    root = tmp_path / "parts"
    for i in range(2):
        _img(root / "train" / f"{i}.png")
    _img(root / "test" / "good" / "g.png")
    _img(root / "test" / "dent" / "a.png")
    _img(root / "test" / "dent" / "b.png")
    _img(root / "test" / "stain" / "c.JPG")
    _mask(root / "test" / "ground_truth" / "dent" / "a_mask.png")
    _mask(root / "test" / "masks" / "stain" / "c.png")
    assert detect_layout(root) == "folder"
    (cat,) = discover(root)
    assert cat.name == "parts" and len(cat.train) == 2
    by_name = {s.path.name: s for s in cat.test}
    assert set(by_name) == {"g.png", "a.png", "b.png", "c.JPG"}  # mask folders are not types
    assert by_name["g.png"].label == 0
    assert by_name["a.png"].mask_path == root / "test" / "ground_truth" / "dent" / "a_mask.png"
    assert by_name["b.png"].label == 1 and by_name["b.png"].mask_path is None
    assert by_name["c.JPG"].mask_path == root / "test" / "masks" / "stain" / "c.png"


def test_discover_folder_direct_and_good_subfolder(tmp_path):
    for i in range(2):
        _img(tmp_path / "normal" / "good" / f"{i}.png")
    _img(tmp_path / "normal" / "good" / ".hidden.png")
    _img(tmp_path / "eval" / "good" / "x.png")
    _img(tmp_path / "eval" / "bad" / "y.png")
    cat = discover_folder(tmp_path / "normal", tmp_path / "eval")
    assert cat.name == "normal" and len(cat.train) == 2
    assert [(s.path.name, s.label) for s in cat.test] == [("y.png", 1), ("x.png", 0)]
    assert discover_folder(tmp_path / "normal", name="widget").name == "widget"


def test_folder_good_subfolder_detected(tmp_path):
    _img(tmp_path / "good" / "a.png")
    assert detect_layout(tmp_path) == "folder"
    assert len(discover(tmp_path, layout="folder")[0].train) == 1


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"training folder not found: .*nope"):
        discover_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no training images in .*empty"):
        discover_folder(tmp_path / "empty")
    _img(tmp_path / "train" / "a.png")
    with pytest.raises(DataError, match=r"test folder not found: .*missing"):
        discover_folder(tmp_path / "train", tmp_path / "missing")
    _img(tmp_path / "loose" / "x.png")
    with pytest.raises(DataError, match=r"loose has images directly inside; .*good"):
        discover_folder(tmp_path / "train", tmp_path / "loose")


def test_folder_filter_by_name(tmp_path):
    _img(tmp_path / "widgets" / "a.png")
    assert discover(tmp_path / "widgets", categories=["widgets"])[0].name == "widgets"
    with pytest.raises(DataError, match=r"unknown category gadgets .*available: widgets"):
        discover(tmp_path / "widgets", categories=["gadgets"])


# ---------------------------------------------------------------- root and layout errors


def test_root_missing(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder not found: .*absent"):
        discover(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"not a folder: .*file\.txt"):
        detect_layout(tmp_path / "file.txt")


def test_undetectable_layout_sketches_expected(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "cannot tell the dataset layout" in msg
    for expected in ("mvtec", "visa", "folder", "train/good", "split_csv/1cls.csv"):
        assert expected in msg


def test_unknown_layout_name(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset layout 'coco'.*mvtec, visa, folder"):
        discover(tmp_path, layout="coco")
