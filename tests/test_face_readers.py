"""Readers of FairFace, UTKFace, FER2013 and folder-per-identity sets, on small fixtures in the real formats."""
import numpy as np
import pytest
import torch
from PIL import Image

from visualsearch.data.errors import DataFormatError, SkipLog
from visualsearch.data.face_readers import (grey_to_tensor, load_face_tensor, parse_utkface_name, read_fairface,
                                            read_fer2013, read_identity_folders, read_utkface)


def _img(path, size=20, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


FAIRFACE_HEADER = "file,age,gender,race,service_test\n"


def _fairface(tmp_path, rows, header=FAIRFACE_HEADER):
    csv = tmp_path / "fairface_label_train.csv"
    csv.write_text(header + "".join(r + "\n" for r in rows))
    return csv


def test_fairface_reads_labels_and_paths(tmp_path):
    _img(tmp_path / "train" / "1.jpg")
    _img(tmp_path / "train" / "2.jpg")
    csv = _fairface(tmp_path, ["train/1.jpg,50-59,Male,East Asian,True", "train/2.jpg,more than 70,Female,Black,False"])
    df = read_fairface(csv)
    assert list(df["age_bin"]) == [6, 8]
    assert list(df["gender"]) == ["Male", "Female"]
    assert list(df["race"]) == ["East Asian", "Black"]
    assert df["file"][0] == str(tmp_path / "train" / "1.jpg")
    assert df["age_years"].isna().all() and list(df["emotion"]) == ["", ""]


def test_fairface_extra_columns_of_the_synthetic_world(tmp_path):
    _img(tmp_path / "val" / "1.jpg")
    csv = _fairface(tmp_path, ["val/1.jpg,20-29,Female,Indian,False,happy,id00007,24.5"],
                    header="file,age,gender,race,service_test,emotion,identity,age_years\n")
    df = read_fairface(csv)
    assert df["emotion"][0] == "happy" and df["identity"][0] == "id00007" and df["age_years"][0] == 24.5


@pytest.mark.parametrize("row,field", [
    ("train/1.jpg,25,Male,White,False", "age"),
    ("train/1.jpg,20-29,M,White,False", "gender"),
    ("train/1.jpg,20-29,Male,Martian,False", "race"),
    ("train/1.jpg,20-29,Male,White,yes", "service_test"),
])
def test_fairface_malformed_row_names_file_line_field(tmp_path, row, field):
    _img(tmp_path / "train" / "1.jpg")
    csv = _fairface(tmp_path, ["train/1.jpg,20-29,Male,White,False", row])
    with pytest.raises(DataFormatError) as e:
        read_fairface(csv)
    msg = str(e.value)
    assert "fairface_label_train.csv" in msg and "line 3" in msg and f"field '{field}'" in msg and "expected" in msg


def test_fairface_missing_column_and_short_row(tmp_path):
    csv = _fairface(tmp_path, ["train/1.jpg,20-29,Male"], header="file,age,gender\n")
    with pytest.raises(DataFormatError, match="line 1.*race"):
        read_fairface(csv)
    csv = _fairface(tmp_path, ["train/1.jpg,20-29,Male"])
    with pytest.raises(DataFormatError, match="line 2.*number of fields"):
        read_fairface(csv)
    with pytest.raises(DataFormatError, match="missing file"):
        read_fairface(tmp_path / "nope.csv")


def test_fairface_missing_and_corrupt_images_skipped_and_counted(tmp_path):
    _img(tmp_path / "train" / "1.jpg")
    (tmp_path / "train" / "3.jpg").write_bytes(b"not a jpeg")
    rows = ["train/1.jpg,3-9,Male,White,False", "train/2.jpg,3-9,Male,White,False", "train/3.jpg,3-9,Male,White,False"]
    csv = _fairface(tmp_path, rows)
    skips = SkipLog()
    df = read_fairface(csv, skips=skips)
    assert len(df) == 1 and skips.count == 2
    assert skips.reasons["missing image"] == 1 and skips.reasons["corrupt image"] == 1
    with pytest.raises(DataFormatError, match="SkipLog"):
        read_fairface(csv)


def test_utkface_names(tmp_path):
    _img(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg")
    _img(tmp_path / "1_1_4_20161221193747091.jpg")
    _img(tmp_path / "39_1_20170116174525125.jpg.chip.jpg")  # malformed name, as in the real release
    skips = SkipLog()
    df = read_utkface(tmp_path, skips=skips)
    assert skips.reasons["malformed UTKFace file name"] == 1
    by_age = df.set_index("age_years")
    assert by_age.loc[25.0, "gender"] == "Male" and by_age.loc[25.0, "race"] == "Asian" and by_age.loc[25.0, "age_bin"] == 3
    assert by_age.loc[1.0, "gender"] == "Female" and by_age.loc[1.0, "race"] == "Others" and by_age.loc[1.0, "age_bin"] == 0
    with pytest.raises(DataFormatError, match="39_1_2017.*field 'name'"):
        read_utkface(tmp_path)


@pytest.mark.parametrize("name,field", [("x_0_1_2017.jpg", "age"), ("20_2_1_2017.jpg", "gender"),
                                        ("20_0_7_2017.jpg", "race"), ("20_0_1_abc.jpg", "date")])
def test_utkface_field_errors(name, field):
    with pytest.raises(ValueError) as e:
        parse_utkface_name(name)
    assert e.value.args[0] == field


def _fer(tmp_path, rows):
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n" + "".join(r + "\n" for r in rows))
    return csv


def test_fer2013_reads_pixels_and_labels(tmp_path):
    px = np.arange(2304) % 256
    rows = [f"3,{' '.join(map(str, px))},Training", f"6,{' '.join(['7'] * 2304)},PrivateTest"]
    images, df = read_fer2013(_fer(tmp_path, rows))
    assert images.shape == (2, 48, 48) and images.dtype == np.uint8
    assert images[0, 0, 5] == 5 and images[0, 47, 47] == 2303 % 256 and (images[1] == 7).all()
    assert list(df["emotion"]) == ["happy", "neutral"] and list(df["usage"]) == ["Training", "PrivateTest"]
    x = grey_to_tensor(images, 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and (x[1] == 7).all()


@pytest.mark.parametrize("row,field", [
    ("9," + " ".join(["1"] * 2304) + ",Training", "emotion"),
    ("1," + " ".join(["1"] * 2303) + ",Training", "pixels"),
    ("1," + " ".join(["300"] * 2304) + ",Training", "pixels"),
    ("1," + " ".join(["a"] * 2304) + ",Training", "pixels"),
    ("1," + " ".join(["1"] * 2304) + ",Test", "Usage"),
])
def test_fer2013_malformed_rows(tmp_path, row, field):
    good = "0," + " ".join(["1"] * 2304) + ",Training"
    with pytest.raises(DataFormatError) as e:
        read_fer2013(_fer(tmp_path, [good, row]))
    assert "line 3" in str(e.value) and f"field '{field}'" in str(e.value)


def test_identity_folders(tmp_path):
    _img(tmp_path / "alice" / "1.jpg")
    _img(tmp_path / "bob" / "1.jpg")
    _img(tmp_path / "bob" / "2.png")
    (tmp_path / "bob" / "3.jpg").write_bytes(b"garbage")
    (tmp_path / "bob" / "notes.txt").write_text("not an image")
    skips = SkipLog()
    df = read_identity_folders(tmp_path, skips=skips)
    assert sorted(df["identity"]) == ["alice", "bob", "bob"] and skips.reasons["corrupt image"] == 1
    df2 = read_identity_folders(tmp_path, skips=SkipLog(), min_images=2)
    assert set(df2["identity"]) == {"bob"}
    with pytest.raises(DataFormatError, match="no identity folders"):
        read_identity_folders(tmp_path / "alice")


def test_load_face_tensor_resizes_and_skips(tmp_path):
    _img(tmp_path / "a.jpg", size=64, value=200)
    skips = SkipLog()
    x, kept = load_face_tensor([tmp_path / "a.jpg", tmp_path / "missing.jpg"], 32, skips)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.uint8 and list(kept) == [True, False]
    assert abs(int(x.float().mean()) - 200) <= 2 and skips.count == 1


def test_fer2013_writer_round_trips_through_the_reader(tmp_path):
    from visualsearch.data.face_readers import read_fer2013, write_fer2013

    images = np.arange(3 * 48 * 48, dtype=np.int64).reshape(3, 48, 48).astype(np.uint8)
    path = write_fer2013(tmp_path / "fer2013.csv", images, ["happy", "neutral", "angry"],
                         ["Training", "PublicTest", "PrivateTest"])
    assert path.read_text().splitlines()[0] == "emotion,pixels,Usage"
    assert path.read_text().splitlines()[1].startswith("3,0 1 2 ")  # FER2013's code of "happy"
    back, df = read_fer2013(path)
    assert np.array_equal(back, images) and df["emotion"].tolist() == ["happy", "neutral", "angry"]
    assert df["usage"].tolist() == ["Training", "PublicTest", "PrivateTest"]
    with pytest.raises(ValueError, match="uint8"):
        write_fer2013(tmp_path / "x.csv", images[:, :40], ["happy"] * 3, ["Training"] * 3)
    with pytest.raises(ValueError, match="usage"):
        write_fer2013(tmp_path / "x.csv", images, ["happy"] * 3, ["Train"] * 3)
