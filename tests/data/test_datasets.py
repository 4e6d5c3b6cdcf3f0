"""Datasets: image folders and their train / validation / test roles, the built-in elpv and hotdog."""

import hashlib
import zipfile
from collections import Counter

import pytest
from helpers import make_folder, serve_directory

from transferlab.data import datasets as D
from transferlab.data.datasets import resolve_data
from transferlab.errors import TransferlabError


def test_image_folder_with_val(image_folder):
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


def test_missing_folder_is_a_clear_error(tmp_path):
    # Bad folders, images, weights and archives: see the corpus in tests/contract/test_bad_input.py.
    with pytest.raises(TransferlabError, match="no such directory") as info:
        D.resolve_data(str(tmp_path / "d"))
    assert "\n" not in str(info.value)


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
    server = serve_directory(served)
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
    with pytest.raises(TransferlabError, match="data='hotdog': cannot download"):
        D.hotdog_root(url="http://127.0.0.1:9/hotdog.zip")


def test_three_folder_tree_uses_all_three_and_carving_never_touches_test(tmp_path):
    three = make_folder(tmp_path / "three", {"train": 6, "val": 3, "test": 4})
    ds = resolve_data(str(three))
    assert (ds.test_source, ds.val_source, len(ds.train), len(ds.val), len(ds.test)) == ("test", "val", 12, 6, 8)
    assert resolve_data(str(three), val_fraction=0.5).val == ds.val  # its own val/ wins over carving
    two = make_folder(tmp_path / "two", {"train": 6, "val": 3})
    ds = resolve_data(str(two))
    assert ds.test_source == "val" and ds.val is None
    bare = make_folder(tmp_path / "bare", {"": 10})
    plain, carved = resolve_data(str(bare), seed=3), resolve_data(str(bare), seed=3, val_fraction=0.25)
    assert carved.test_files() == plain.test_files() and carved.val_source == "carved"
    train_files = {p.name for p in carved.train.paths}
    assert len(carved.val) == 4 and not train_files & {p.name for p in carved.val.paths}
    assert train_files | {p.name for p in carved.val.paths} == {p.name for p in plain.train.paths}
