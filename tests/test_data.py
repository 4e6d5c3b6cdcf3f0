import hashlib
import zipfile
from collections import Counter

import numpy as np
import pytest
from conftest import make_folder, make_image
from PIL import Image
from test_weights import _serve

from transferlab import data as D
from transferlab.errors import TransferlabError


def test_image_folder_with_val(image_folder):
    (image_folder / "train" / "red" / ".DS_Store").write_bytes(b"junk")
    (image_folder / "train" / "red" / "._hidden.png").write_bytes(b"junk")
    (image_folder / "train" / "red" / "notes.txt").write_text("not an image")
    ds = D.resolve_data(str(image_folder))
    assert ds.classes == ("blue", "red") and ds.test_source == "val"
    assert len(ds.train) == 16 and len(ds.test) == 8
    assert Counter(ds.train.labels) == {0: 8, 1: 8}


def test_train_only_is_split_stratified_and_seeded(tmp_path):
    root = make_folder(tmp_path / "d", {"train": 12})
    a, b = D.resolve_data(str(root), seed=3), D.resolve_data(str(root), seed=3)
    assert a.test_source == "split" and a.test.paths == b.test.paths
    assert Counter(a.test.labels) == {0: 3, 1: 3} and len(a.train) == 18
    assert not set(a.train.paths) & set(a.test.paths)
    assert D.resolve_data(str(root), seed=4).test.paths != a.test.paths


@pytest.mark.parametrize("case,match", [
    ("missing", "no such directory"),
    ("empty_class", "class folder has no images"),
    ("differing", "class folders differ between train/ and val/"),
    ("one_class", "only one class"),
    ("too_few", "too few images to split"),
])
def test_bad_folders_are_clear_errors(tmp_path, case, match):
    root = tmp_path / "d"
    if case == "empty_class":
        make_folder(root, {"train": 2, "val": 1})
        (root / "train" / "green").mkdir()
    elif case == "differing":
        make_folder(root, {"train": 2})
        make_folder(root, {"val": 1}, classes={"red": (200, 0, 0), "green": (0, 200, 0)})
    elif case == "one_class":
        make_folder(root, {"train": 4}, classes={"red": (200, 0, 0)})
    elif case == "too_few":
        make_folder(root, {"train": 1})
    with pytest.raises(TransferlabError, match=match) as info:
        D.resolve_data(str(root))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    ext = ".jpg" if mode == "CMYK" else ".png"
    path = make_image(tmp_path / f"img{ext}", (120, 60, 30), mode="RGB")
    img = Image.open(path)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    else:
        img = img.convert(mode)
    img.save(path)
    out = D.load_rgb(path)
    assert out.mode == "RGB" and out.size == (72, 64)
    pixels = np.asarray(out, dtype=np.int16)
    if mode in ("L", "I;16", "LA"):
        assert (pixels[..., 0] == pixels[..., 1]).all() and pixels.mean() > 40  # 16-bit scaled, not clipped


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(path, exif=exif)
    assert D.load_rgb(path).size == (20, 40)


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is not a jpeg")
    with pytest.raises(TransferlabError, match="bad.jpg: cannot read image"):
        D.load_rgb(bad)


def test_elpv_is_materialised_as_a_stratified_image_folder():
    ds = D.resolve_data("elpv")
    assert ds.classes == ("defective", "functional") and ds.test_source == "test"
    assert len(ds.train) + len(ds.test) == 2624
    assert abs(len(ds.test) / 2624 - 0.25) < 0.01
    for split in (ds.train, ds.test):
        share = Counter(split.labels)[0] / len(split)
        assert abs(share - 821 / 2624) < 0.01  # defective = probability >= 0.5
    assert D.resolve_data("elpv").test.paths == ds.test.paths


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_hotdog_download_checks_sha1_and_extracts(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))
    src = make_folder(tmp_path / "src", {"train": 2, "test": 1},
                      classes={"hotdog": (200, 100, 50), "not-hotdog": (50, 200, 100)}, ext=".jpg")
    served = tmp_path / "srv"
    served.mkdir()
    members = {f"hotdog/{p.relative_to(src)}": p.read_bytes() for p in src.rglob("*.jpg")}
    sha1 = _zip(served / "hotdog.zip", members)
    server = _serve(served)
    url = f"http://127.0.0.1:{server.server_port}/hotdog.zip"
    try:
        with pytest.raises(TransferlabError, match="wrong SHA-1"):
            D.hotdog_root(url=url, sha1="0" * 40)
        root = D.hotdog_root(url=url, sha1=sha1)
    finally:
        server.shutdown()
    assert root.name == "hotdog" and sorted(p.name for p in root.iterdir()) == ["test", "train"]
    monkeypatch.setattr(D, "hotdog_root", lambda: root)
    ds = D.resolve_data("hotdog")
    assert ds.classes == ("hotdog", "not-hotdog") and len(ds.train) == 4 and len(ds.test) == 2


def test_hotdog_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))
    with pytest.raises(TransferlabError, match="--data hotdog: cannot download"):
        D.hotdog_root(url="http://127.0.0.1:9/hotdog.zip")


def test_zip_with_parent_paths_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    _zip(archive, {"hotdog/train/a.jpg": b"x", "../../escaped.txt": b"owned"})
    with pytest.raises(TransferlabError, match="outside"):
        D.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
