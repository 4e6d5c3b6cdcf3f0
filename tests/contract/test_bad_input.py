"""The bad-input corpus (issue 5): every kind of bad input, generated here, and its defined outcome.

``CASES`` is the table; docs/bad-input.md lists the same cases. Each case builds its input in a
fresh folder and says what must happen:

- ``error``: ``transferlab train`` (the real CLI, in a process of its own) exits 2 with exactly one line
  ``transferlab: error: ...`` that contains every needle (the file or option, and the fix), no
  traceback, and no run output: a fresh ``--out`` is never created and an existing run directory
  is byte-for-byte unchanged. Image kinds marked ``skip`` are instead dropped under
  ``--skip-bad-images``: one warning naming the file each, then a count, and training goes on.
- ``loads``: the input is converted (or ignored) and training succeeds; image kinds also pass a
  pixel check through :func:`transferlab.data.datasets.load_rgb`.
- ``refused`` (archives, API only): ``TransferlabError``, and nothing is written.

Each CLI run is a child process with a strict UTF-8 stdout, its own exit status and stderr. A fresh
interpreter per run spends about 3 s of CPU importing torch before it reads an argument, so the children
are forked from an interpreter that imported transferlab once (``ZYGOTE``); the runs that need open()
patched before any import (unreadable files, as root) still start a fresh interpreter (``DENY_BOOT``).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_folder, make_image, serve_directory
from PIL import Image

from transferlab.config import make_config
from transferlab.data import datasets as D
from transferlab.errors import TransferlabError

MODEL = ["--model", "mobilenet_v2"]  # named: the default, auto, ranks the backbones before a run
TINY = [*MODEL, "--image-size", "64", "--epochs", "1", "--batch-size", "8"]
WORKERS = 2  # CLI runs at once, each from its own zygote (2 CPU cores)
BOMB_LIMIT = {"TRANSFERLAB_MAX_PIXELS": "20000"}  # the generated images are far smaller; the "bomb" is 160x160
CAFE = os.fsdecode(b"caf\xe9")  # a non-UTF-8 name (Latin-1 bytes), as Linux hands it to Python
GRUEN = os.fsdecode(b"gr\xfcn")

# Runs the CLI with open() and os.scandir() refusing the paths in $TRANSFERLAB_TEST_DENY: root reads
# chmod-000 files anyway, so for root an unreadable file is simulated (non-root gets a real chmod 000).
DENY_BOOT = """
import builtins, errno, io, os, sys
denied = set(filter(None, os.environ["TRANSFERLAB_TEST_DENY"].split(os.pathsep)))
def check(path):
    if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)) in denied:
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
def wrap(real):
    def guarded(path, *args, **kwargs):
        check(path)
        return real(path, *args, **kwargs)
    return guarded
builtins.open = io.open = wrap(builtins.open)
os.scandir = wrap(os.scandir)
from transferlab.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""

# Imports what `transferlab train` imports, once, then forks a child per request (a JSON line on stdin:
# argv, cwd, env, stdout and stderr files) and answers with the child's pid, then its exit status.
# The child runs the CLI as `python -m transferlab` does, on the stdio this interpreter started with
# (PYTHONIOENCODING: a strict UTF-8 stdout), pointed at the request's files.
ZYGOTE = r"""
import json, os, sys, traceback
import torch  # noqa: F401
from importlib.util import find_spec
import transferlab.cli.commands, transferlab.workflows.finetuning  # noqa: F401, E401
answers = os.dup(1)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(answers)
            os.chdir(request["cwd"])
            os.environ.update(request["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(target, fd)
                os.close(target)
            sys.argv = [find_spec("transferlab.__main__").origin, *request["argv"]]
            from transferlab.cli import main
            code = main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    code = 120  # what Python exits with when flushing stdout fails
            os._exit(code)
    os.write(answers, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(answers, f"{os.waitstatus_to_exitcode(status)}\n".encode())
"""


class Zygote:
    """A Python that imported transferlab once; ``run`` forks the CLI in a child of it."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, bufsize=0)
        self.io = Path(tempfile.mkdtemp(prefix="zygote-"))
        self.buffer = b""

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 300,
            ) -> subprocess.CompletedProcess:
        out, err = self.io / "stdout", self.io / "stderr"
        request = {"argv": list(argv), "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        pid = int(self._answer(300))  # the first one waits for the imports
        try:
            code = int(self._answer(timeout))
        except TimeoutError:
            os.kill(pid, 9)
            raise
        return subprocess.CompletedProcess(["transferlab", *argv], code, out.read_text(encoding="utf-8"),
                                           err.read_text(encoding="utf-8"))

    def _answer(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise TimeoutError(f"no answer from the zygote in {timeout} s (status {self.proc.poll()})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.io, ignore_errors=True)


# --------------------------------------------------------------------------- image makers


def _noise(color: tuple[int, int, int], size: tuple[int, int] = (72, 64), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


def _jpeg_bytes(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(color)).save(buffer, "JPEG")
    return buffer.getvalue()


def truncated_jpeg(folder: Path, name: str = "cut.jpg") -> Path:
    data = _jpeg_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    return folder / name


def zero_byte(folder: Path) -> Path:
    (folder / "empty.jpg").write_bytes(b"")
    return folder / "empty.jpg"


def text_as_jpg(folder: Path) -> Path:
    (folder / "notes.jpg").write_text("shopping list: not a photo\n")
    return folder / "notes.jpg"


def bomb(folder: Path) -> Path:
    Image.new("RGB", (160, 160), (200, 40, 40)).save(folder / "huge.png")
    return folder / "huge.png"


def link_loop(folder: Path) -> Path:
    os.symlink("loop_b", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b")
    return folder / "loop_a.jpg"


def unreadable(folder: Path) -> Path:
    (folder / "secret.jpg").write_bytes(_jpeg_bytes())
    return folder / "secret.jpg"


def non_utf8_truncated(folder: Path) -> Path:
    return truncated_jpeg(folder, f"{CAFE}-cut.jpg")


def png_as_jpg(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).save(folder / "photo.jpg", format="PNG")
    return folder / "photo.jpg"


def avif_photo(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).save(folder / "photo.avif")
    return folder / "photo.avif"


def ico_icon(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).save(folder / "icon.ico", sizes=[(72, 64)])
    return folder / "icon.ico"


def cmyk_jpeg(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).convert("CMYK").save(folder / "cmyk.jpg")
    return folder / "cmyk.jpg"


def gray16_png(folder: Path) -> Path:
    ramp = np.tile(np.linspace(0, 65535, 72).astype(np.uint16), (64, 1))  # the full 16-bit range
    Image.fromarray(ramp).save(folder / "depth16.png")
    return folder / "depth16.png"


def rgba_png(folder: Path) -> Path:
    pixels = np.zeros((64, 72, 4), np.uint8)
    pixels[:, 36:] = (200, 40, 40, 255)  # left half fully transparent (black underneath)
    Image.fromarray(pixels, "RGBA").save(folder / "alpha.png")
    return folder / "alpha.png"


def palette_png(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).convert("P").save(folder / "palette.png")
    return folder / "palette.png"


def gray_jpeg(folder: Path) -> Path:
    Image.fromarray(_noise((120, 120, 120))).convert("L").save(folder / "gray.jpg")
    return folder / "gray.jpg"


def gray_alpha_png(folder: Path) -> Path:
    pixels = np.zeros((64, 72, 2), np.uint8)
    pixels[:, 36:] = (90, 255)
    Image.fromarray(pixels, "LA").save(folder / "gray_alpha.png")
    return folder / "gray_alpha.png"


def exif_rotated(folder: Path) -> Path:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (220, 0, 0)  # stored: red left, blue right
    pixels[:, 20:] = (0, 0, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    Image.fromarray(pixels).save(folder / "rotated.jpg", exif=exif)
    return folder / "rotated.jpg"


def one_pixel(folder: Path) -> Path:
    Image.new("RGB", (1, 1), (200, 40, 40)).save(folder / "dot.png")
    return folder / "dot.png"


def non_utf8_name(folder: Path) -> Path:
    Image.fromarray(_noise((200, 40, 40))).save(folder / f"{CAFE}.png")
    return folder / f"{CAFE}.png"


# --------------------------------------------------------------------------- pixel checks


def _mean(img: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    return np.asarray(img.crop(box) if box else img, dtype=np.float64).mean(axis=(0, 1))


def _reddish(img: Image.Image) -> None:
    r, g, b = _mean(img)
    assert img.size == (72, 64) and r > 150 and g < 90 and b < 90, (r, g, b)


def _grey(img: Image.Image) -> None:
    pixels = np.asarray(img)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def _check_gray16(img: Image.Image) -> None:
    _grey(img)
    assert abs(_mean(img)[0] - 127.5) < 3  # scaled from 16 bits, neither clipped (255) nor truncated (~0)


def _check_rgba(img: Image.Image) -> None:
    assert (_mean(img, (0, 0, 36, 64)) == 255).all()  # transparent -> white, not black
    assert _mean(img, (36, 0, 72, 64))[0] == 200


def _check_gray_alpha(img: Image.Image) -> None:
    _grey(img)
    assert _mean(img, (0, 0, 36, 64))[0] == 255 and _mean(img, (36, 0, 72, 64))[0] == 90


def _check_rotated(img: Image.Image) -> None:
    assert img.size == (20, 40)  # displayed orientation: red on top, blue below
    top, bottom = _mean(img, (0, 0, 20, 18)), _mean(img, (0, 22, 20, 40))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0], (top, bottom)


def _check_dot(img: Image.Image) -> None:
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (200, 40, 40)


# --------------------------------------------------------------------------- data and run builders


def good_data(d: Path, splits: dict[str, int] | None = None) -> Path:
    return make_folder(d / "data", splits or {"train": 4, "val": 2})


def empty_class(d: Path) -> list:
    (good_data(d) / "train" / "green").mkdir()
    return ["--data", d / "data"]


def single_class(d: Path) -> list:
    make_folder(d / "data", {"train": 4}, classes={"red": (200, 40, 40)})
    return ["--data", d / "data"]


def classes_differ(d: Path) -> list:
    make_folder(d / "data", {"train": 2})
    make_folder(d / "data", {"val": 1}, classes={"red": (200, 40, 40), "green": (40, 200, 40)})
    return ["--data", d / "data"]


def too_few_to_split(d: Path) -> list:
    make_folder(d / "data", {"train": 1})
    return ["--data", d / "data"]


def unreadable_folder(d: Path) -> list:
    make_image(good_data(d) / "train" / "red" / "private" / "p.png", (200, 40, 40))
    return ["--data", d / "data"]


def unreadable_dataset(d: Path) -> list:
    return ["--data", good_data(d)]  # the whole dataset folder is made unreadable


def junk_files(d: Path) -> list:
    """System and hidden files, which scanning ignores; none is counted."""
    root = good_data(d)
    red = root / "train" / "red"
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._red_0.png", ".hidden.jpg"):
        (red / name).write_bytes(b"\x00\x05\x16\x07 Mac OS X junk")
    (red / "notes.txt").write_text("not an image")
    (red / ".thumbnails").mkdir()
    (red / ".thumbnails" / "red_0.jpg").write_bytes(b"junk")
    (root / "train" / "__MACOSX" / "red").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "red" / "._red_0.png").write_bytes(b"junk")
    return ["--data", root]


def folder_link_loops(d: Path) -> list:
    """Folder links back to the class folder and to the split: skipped (warned), nothing counted twice."""
    red = good_data(d) / "train" / "red"
    os.symlink(".", red / "again")
    os.symlink("..", red / "up")
    return ["--data", d / "data"]


def non_utf8_class(d: Path) -> list:
    make_folder(d / "data", {"train": 4, "val": 2}, classes={GRUEN: (40, 200, 40)})
    return ["--data", good_data(d)]  # with red and blue


def _run_dir(d: Path, data: Path, **files: bytes) -> Path:
    run = d / "run"
    run.mkdir()
    config = make_config(data=str(data), model="mobilenet_v2", image_size=64, batch_size=8, epochs=1,
                         out=str(run))  # the TINY options
    config.save(run / "config.json")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    for name, payload in files.items():
        (run / name.replace("_", ".")).write_bytes(payload)
    return run


def corrupt_checkpoint(d: Path) -> list:
    _run_dir(d, good_data(d), checkpoint_pt=b"PK\x03\x04 this is not a checkpoint")
    return ["--resume"]


def empty_checkpoint(d: Path) -> list:
    _run_dir(d, good_data(d), checkpoint_pt=b"")
    return ["--resume"]


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def checkpoint_of_other_model(d: Path) -> list:
    from torchvision.models import resnet18

    state = {"model": resnet18(num_classes=2).state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1,
             "elapsed": 1.0, "torch_rng": torch.get_rng_state(), "history": "[]"}
    _run_dir(d, good_data(d), checkpoint_pt=_torch_bytes(state))
    return ["--resume"]


def bad_image_resuming_finished_run(d: Path) -> list:
    data = good_data(d)
    truncated_jpeg(data / "train" / "red")
    _run_dir(d, data, metrics_json=b'{"test_acc": 0.5}\n', model_safetensors=b"a finished model")
    return ["--resume"]


def weights_of_other_model(d: Path) -> list:
    from torchvision.models import resnet18

    (d / "resnet18.pth").write_bytes(_torch_bytes(resnet18().state_dict()))
    return ["--data", good_data(d), "--weights", d / "resnet18.pth"]


def weights_hash_mismatch(d: Path) -> list:
    (d / "mobilenet_v2-b0353104.pth").write_bytes(_torch_bytes({"w": torch.zeros(1)}))
    return ["--data", good_data(d), "--weights", d / "mobilenet_v2-b0353104.pth"]


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def malicious_pickle(d: Path) -> list:
    _Evil.marker = str(d / "pwned")
    (d / "evil.pth").write_bytes(pickle.dumps({"weight": _Evil()}))
    return ["--data", good_data(d), "--weights", d / "evil.pth"]


def _zip(path: Path, members: dict[str, bytes], links: Sequence[str] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            zf.writestr(info, "../../../etc/passwd")
    return path


def foreign_out(d: Path) -> list:
    """--out pointing at a folder of the user's own files (a project folder, say)."""
    (d / "run").mkdir()
    (d / "run" / "notes.txt").write_text("my notes")
    (d / "run" / "config.json").write_text('{"mine": true}')
    return ["--data", good_data(d)]


def interrupted_without_resume(d: Path) -> list:
    _run_dir(d, good_data(d), checkpoint_pt=b"an interrupted run's checkpoint")
    return ["--data", d / "data"]


def config_with_text_epochs(d: Path) -> list:
    run = _run_dir(d, good_data(d), checkpoint_pt=b"x")
    values = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**values, "epochs": "3"}))
    return ["--resume"]


def options(*args: object) -> Callable[[Path], list]:
    def build(d: Path) -> list:
        return ["--data", good_data(d), *args]

    return build


def heic_only_class(d: Path) -> list:
    (good_data(d) / "train" / "green").mkdir()
    for i in range(2):
        (d / "data" / "train" / "green" / f"IMG_{i}.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    return ["--data", d / "data"]


def zip_bomb(d: Path) -> Path:
    return _zip(d / "hotdog.zip", {"hotdog/train/hotdog/a.jpg": _jpeg_bytes(), "hotdog/big.bin": bytes(50_000_000)})


def zip_slip(d: Path) -> Path:
    return _zip(d / "hotdog.zip", {"hotdog/train/hotdog/a.jpg": _jpeg_bytes(), "../../escaped.txt": b"owned"})


def zip_link(d: Path) -> Path:
    return _zip(d / "hotdog.zip", {"hotdog/train/hotdog/a.jpg": _jpeg_bytes()}, links=["hotdog/train/hotdog/b.jpg"])


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to build it, how it is fed in, and what must happen."""

    name: str
    outcome: str  # "error", "loads" or "refused"
    needles: tuple[str, ...] = ()  # the error line (or the refusal) contains each
    image: Callable[[Path], Path] | None = None  # makes one file in a folder of a good dataset:
    where: str = "train/red"  # ... this one
    build: Callable[[Path], list] | None = None  # builds the input under a folder; returns CLI arguments
    archive: Callable[[Path], Path] | None = None  # builds a hotdog.zip for data.hotdog_root
    check: Callable[[Image.Image], None] | None = None  # what load_rgb returns, for loading images
    skip: bool = False  # --skip-bad-images drops it (a warning naming it) instead of the error
    env: dict[str, str] = field(default_factory=dict)
    deny: str | None = None  # this file or folder is unreadable
    fresh_out: bool = True  # the command writes to a new --out (else: an existing run directory)


CASES = [
    # images that cannot be used: an error naming the file, or a counted skip with --skip-bad-images
    Case("truncated JPEG", "error", ("cut.jpg", "truncated", "--skip-bad-images"), truncated_jpeg, skip=True),
    Case("zero-byte file", "error", ("empty.jpg", "empty file (0 bytes)", "--skip-bad-images"), zero_byte,
         skip=True),
    Case("text file named .jpg", "error", ("notes.jpg", "not an image", "--skip-bad-images"), text_as_jpg, skip=True),
    Case("decompression bomb over TRANSFERLAB_MAX_PIXELS", "error",
         ("huge.png", "25600 pixels", "limit of 20000", "TRANSFERLAB_MAX_PIXELS", "--skip-bad-images"), bomb,
         skip=True, env=BOMB_LIMIT),
    Case("symlink loop (file)", "error", ("loop_a.jpg", "Too many levels of symbolic links"), link_loop, skip=True),
    Case("unreadable file (permissions)", "error", ("secret.jpg", "Permission denied", "permissions"), unreadable,
         skip=True, deny="secret.jpg"),
    Case("bad image with a non-UTF-8 name", "error", ("caf\\udce9-cut.jpg", "truncated"), non_utf8_truncated,
         skip=True),
    Case("bad image in the val split", "error", ("val/blue/notes.jpg", "not an image"), text_as_jpg,
         where="val/blue", skip=True),
    # images that load: content decides the format, modes are converted, EXIF rotation applied
    Case("PNG saved as .jpg", "loads", image=png_as_jpg, check=_reddish),
    Case("CMYK JPEG", "loads", image=cmyk_jpeg, check=_reddish),
    Case("AVIF photo", "loads", image=avif_photo, check=_reddish),
    Case(".ico icon", "loads", image=ico_icon, check=_reddish),
    Case("16-bit grey PNG", "loads", image=gray16_png, check=_check_gray16),
    Case("RGBA PNG", "loads", image=rgba_png, check=_check_rgba),
    Case("palette PNG", "loads", image=palette_png, check=_reddish),
    Case("greyscale JPEG", "loads", image=gray_jpeg, check=_grey),
    Case("grey + alpha PNG", "loads", image=gray_alpha_png, check=_check_gray_alpha),
    Case("EXIF-rotated photo", "loads", image=exif_rotated, check=_check_rotated),
    Case("1x1 image (upsampled)", "loads", image=one_pixel, check=_check_dot),
    Case("non-UTF-8 file name", "loads", image=non_utf8_name, check=_reddish),
    # folders
    Case("hidden files, .DS_Store, Thumbs.db, __MACOSX", "loads", build=junk_files),
    Case("symlink loop (folder)", "loads", build=folder_link_loops),
    Case("non-UTF-8 class folder name", "loads", build=non_utf8_class),
    Case("unreadable class subfolder", "error", ("train/red/private", "cannot list folder", "Permission denied"),
         build=unreadable_folder, deny="private"),
    Case("unreadable dataset folder", "error", ("data", "cannot list folder", "Permission denied"),
         build=unreadable_dataset, deny="data"),
    Case("empty class folder", "error", ("train/green", "class folder has no images"), build=empty_class),
    Case("single class", "error", ("only one class", "at least two"), build=single_class),
    Case("class names differ between train and val", "error",
         ("class folders differ", "only in val: ['green']", "rename"), build=classes_differ),
    Case("no val split, too few images to split", "error", ("too few images to split", "provide val/"),
         build=too_few_to_split),
    # options no run can use
    Case("--weight-decay nan", "error", ("--weight-decay must be a finite number",), build=options("--weight-decay",
                                                                                                   "nan")),
    Case("--warmup-epochs nan", "error", ("--warmup-epochs must be a finite number",),
         build=options("--warmup-epochs", "nan")),
    Case("--seed beyond 2**32", "error", ("--seed 1099511627776", "2**32"), build=options("--seed", 2**40)),
    Case("--device meta", "error", ("--device meta", "use auto, cpu, cuda"), build=options("--device", "meta")),
    Case("--device mps without MPS", "error", ("--device mps", "use auto, cpu, cuda"),
         build=options("--device", "mps")),
    Case("--resize-size below --image-size", "error", ("--resize-size 16", "smaller than", "--image-size 64"),
         build=options("--resize-size", "16")),
    Case("--lr above the ceiling", "error", ("--lr 1000000000.0", "above 1", "--force"), build=options("--lr", "1e9")),
    Case("--probe-lr above the ceiling", "error", ("--probe-lr 1000000000.0", "--force"),
         build=options("--freeze", "body", "--probe-lr", "1e9")),
    Case("--image-size 5000", "error", ("--image-size 5000", "over 2048"), build=options("--image-size", "5000")),
    Case("--val-fraction 1", "error", ("--val-fraction must be in [0, 1)", "no validation split"),
         build=options("--val-fraction", "1")),
    Case("--test-fraction 0", "error", ("--test-fraction must be in (0, 1)",), build=options("--test-fraction", "0")),
    Case("--early-stopping -1", "error", ("--early-stopping must be 0 (off)",),
         build=options("--early-stopping", "-1")),
    Case("--select-metric with one training image in a class", "error",
         ("too few training images to carve a validation split", "provide val/"),
         build=lambda d: ["--data", good_data(d, {"train": 1, "val": 2}), "--select-metric", "loss"]),
    Case('--data ""', "error", ("--data is empty", "elpv", "hotdog"), build=lambda d: ["--data", ""]),
    Case("class folder of HEIC photos only", "error", ("train/green", "2 files (2 .heic)", "convert them"),
         build=heic_only_class),
    # the run directory belongs to one run
    Case("--out is a folder of other files", "error", ("not empty and not a run", "notes.txt", "--overwrite"),
         build=foreign_out, fresh_out=False),
    Case("--out holds an interrupted run, no --resume", "error",
         ("an interrupted run is there (checkpoint.pt)", "--resume", "--overwrite"),
         build=interrupted_without_resume, fresh_out=False),
    Case('config.json says "epochs": "3", --resume', "error",
         ("config.json", "--epochs must be a whole number, got '3'"), build=config_with_text_epochs, fresh_out=False),
    Case("--out under a file", "error", ("cannot create it", "Not a directory"),
         build=lambda d: ["--data", good_data(d), "--out", "/dev/null/run"]),
    # checkpoints and weights
    Case("corrupt checkpoint, --resume", "error", ("checkpoint.pt", "delete it to start over"),
         build=corrupt_checkpoint, fresh_out=False),
    Case("zero-byte checkpoint, --resume", "error", ("checkpoint.pt", "delete it to start over"),
         build=empty_checkpoint, fresh_out=False),
    Case("checkpoint of another model, --resume", "error", ("checkpoint.pt", "delete it to start over"),
         build=checkpoint_of_other_model, fresh_out=False),
    Case("--resume of a finished run (with a bad image in its data)", "error",
         ("a finished run is already there (model.safetensors)", "--overwrite"),
         build=bad_image_resuming_finished_run, fresh_out=False),
    Case("--weights of another architecture", "error", ("resnet18.pth", "mobilenet_v2", "another architecture"),
         build=weights_of_other_model),
    Case("--weights with a wrong hash in its name", "error",
         ("mobilenet_v2-b0353104.pth", "sha256 does not start with b0353104", "download it again"),
         build=weights_hash_mismatch),
    Case("malicious pickle in a .pth", "error", ("evil.pth",), build=malicious_pickle),  # and it did not run
    # the hotdog download
    Case("zip with ../ paths", "refused", ("../../escaped.txt", "outside"), archive=zip_slip),
    Case("zip with a symlink member", "refused", ("b.jpg", "symbolic link"), archive=zip_link),
    Case("zip bomb", "refused", ("would unpack to", "zip bomb"), archive=zip_bomb),
]


def _ids(cases: Sequence[Case]) -> list[str]:
    return [c.name for c in cases]


IMAGES = [c for c in CASES if c.image]
ERRORS = [c for c in CASES if c.outcome == "error"]
LOADS = [c for c in CASES if c.outcome == "loads"]
SKIPS = [c for c in CASES if c.skip]
ARCHIVES = [c for c in CASES if c.outcome == "refused"]


# --------------------------------------------------------------------------- running


def _build(case: Case, d: Path) -> tuple[list, list[Path]]:
    """Build ``case`` under ``d``; returns its CLI arguments and the paths to make unreadable."""
    d.mkdir(parents=True, exist_ok=True)
    if case.image:
        made = case.image(good_data(d) / case.where)
        args = ["--data", d / "data"]
    else:
        args = case.build(d)
        made = None
    denied = []
    if case.deny:
        denied = [made] if made and made.name == case.deny else list(d.rglob(case.deny))
        assert len(denied) == 1, case.deny
    return args, denied


def run_train(args: Sequence, cwd: Path, env: dict[str, str] | None = None, deny: Sequence[Path] = (),
              zygotes: queue.Queue | None = None) -> subprocess.CompletedProcess:
    """``python -m transferlab train ARGS`` with a strict UTF-8 stdout; ``deny``: unreadable paths.

    Forked from one of ``zygotes`` where given (and open() needs no patch), else a fresh interpreter.
    One torch thread each: the runs go in parallel on a small machine.
    """
    if zygotes is not None and not (deny and os.geteuid() == 0):
        zygote = zygotes.get()
        for path in deny:
            path.chmod(0)
        try:
            return zygote.run(["train", *map(str, args)], cwd, env or {})
        finally:
            for path in deny:
                path.chmod(0o755)
            zygotes.put(zygote)
    full_env = {**os.environ, **(env or {}), "PYTHONIOENCODING": "utf-8:strict", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "transferlab"]
    if deny and os.geteuid() == 0:
        full_env["TRANSFERLAB_TEST_DENY"] = os.pathsep.join(str(p.absolute()) for p in deny)
        command = [sys.executable, "-c", DENY_BOOT]
    else:
        for path in deny:
            path.chmod(0)
    try:
        return subprocess.run([*command, "train", *map(str, args)], capture_output=True, text=True,
                              encoding="utf-8", cwd=cwd, env=full_env, timeout=300)
    finally:
        for path in deny:
            path.chmod(0o755)


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("transferlab: error: "), proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- the tests


def _shown(text: str) -> str:
    """``text`` as stderr prints it: non-UTF-8 bytes (surrogates) become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.mark.parametrize("case", IMAGES, ids=_ids(IMAGES))
def test_image_kind_through_load_rgb(case, tmp_path, monkeypatch):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / case.where).mkdir(parents=True)
    path = case.image(tmp_path / case.where)
    if case.check:
        image = D.load_rgb(path)
        assert image.mode == "RGB"
        case.check(image)
        return
    if case.deny and os.geteuid() == 0:
        pytest.skip("root reads chmod-000 files; the CLI case simulates this one with a mocked open()")
    if case.deny:
        path.chmod(0)
    try:
        with pytest.raises(TransferlabError) as info:
            D.load_rgb(path)
    finally:
        if case.deny:
            path.chmod(0o644)
    message = _shown(str(info.value))
    assert "\n" not in message and message.startswith(_shown(str(path)))
    for needle in case.needles:
        if needle != "--skip-bad-images":  # the decode step adds that hint
            assert needle in message, message


@dataclass
class Launched:
    """A CLI run started in the background, with what its test needs to judge it."""

    folder: Path
    before: dict[str, bytes] | None
    future: Future
    bad: list[Path] = field(default_factory=list)

    @property
    def proc(self) -> subprocess.CompletedProcess:
        return self.future.result()


def _launch_error(pool: ThreadPoolExecutor, zygotes: queue.Queue, case: Case, d: Path) -> Launched:
    args, denied = _build(case, d)
    before = snapshot(d / "run")
    assert (before is None) == case.fresh_out
    # a resumed run keeps its own options; a new one into an existing folder names the model
    extra = TINY if case.fresh_out else [] if "--resume" in map(str, args) else MODEL
    out = [] if "--out" in map(str, args) else ["--out", d / "run"]
    return Launched(d, before, pool.submit(run_train, [*extra, *args, *out, "--quiet"], d,
                                           case.env, denied, zygotes))


def _launch_loads(pool: ThreadPoolExecutor, zygotes: queue.Queue, d: Path) -> Launched:
    for case in LOADS:
        _build(case, d)
    return Launched(d, None, pool.submit(run_train, ["--data", d / "data", *TINY, "--out", d / "run"], d,
                                         None, (), zygotes))


def _launch_skips(pool: ThreadPoolExecutor, zygotes: queue.Queue, d: Path) -> Launched:
    bad, denied, env = [], [], {}
    for case in SKIPS:
        made = case.image(good_data(d) / case.where)
        bad.append(made)
        denied += [made] if case.deny else []
        env.update(case.env)
    args = ["--data", d / "data", *TINY, "--skip-bad-images", "--out", d / "run", "--quiet"]
    return Launched(d, None, pool.submit(run_train, args, d, env, denied, zygotes), bad)


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory) -> dict[str, Launched]:
    """Every selected CLI run, started up front and run WORKERS at a time, each forked from a zygote."""
    wanted = {item.name for item in request.session.items}
    root = tmp_path_factory.mktemp("cli")
    zygotes: queue.Queue[Zygote] = queue.Queue()
    for _ in range(WORKERS):
        zygotes.put(Zygote())
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            runs: dict[str, Launched] = {}
            if "test_everything_that_loads_trains_end_to_end" in wanted:
                runs["loads"] = _launch_loads(pool, zygotes, root / "loads")
            if "test_skip_bad_images_drops_and_counts_each_one" in wanted:
                runs["skip"] = _launch_skips(pool, zygotes, root / "skip")
            for i, case in enumerate(ERRORS):
                if f"test_error_is_one_line_and_leaves_no_output[{case.name}]" in wanted:
                    runs[case.name] = _launch_error(pool, zygotes, case, root / f"error{i}")
            yield runs
            for run in runs.values():
                run.future.cancel()
    finally:
        for _ in range(WORKERS):
            zygotes.get().close()


@pytest.mark.slow  # the real CLI in a process of its own, one per case
@pytest.mark.parametrize("case", ERRORS, ids=_ids(ERRORS))
def test_error_is_one_line_and_leaves_no_output(case, launched):
    run = launched[case.name]
    line = error_line(run.proc)
    for needle in case.needles:
        assert needle in line, line
    assert snapshot(run.folder / "run") == run.before  # nothing created, nothing changed
    assert not (run.folder / "pwned").exists()  # the malicious pickle did not run


@pytest.mark.slow  # the real CLI in a process of its own, one per case
def test_everything_that_loads_trains_end_to_end(launched):
    """One training run over every "loads" case at once, not quiet (names get logged too)."""
    run = launched["loads"]
    proc = run.proc
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    metrics = json.loads((run.folder / "run" / "metrics.json").read_text())
    assert metrics["class_names"] == ["blue", GRUEN, "red"]  # written to JSON, read back intact
    kinds = sum(1 for c in LOADS if c.image)
    assert (metrics["train_images"], metrics["test_images"]) == (3 * 4 + kinds, 3 * 2)  # no junk, no loop twice
    assert proc.stderr.count("the folder link loops back") == 2, proc.stderr
    # the non-UTF-8 class name is shown as \\xNN where people read it: the report, and the server's JSON
    assert "could not write" not in proc.stderr, proc.stderr
    report = (run.folder / "run" / "report.html").read_text(encoding="utf-8", errors="strict")
    assert "gr\\xfcn" in report
    from fastapi.testclient import TestClient

    from transferlab.inference.serve import create_app

    client = TestClient(create_app(run.folder / "run", device="cpu"))
    assert client.get("/info").json()["class_names"] == ["blue", "gr\\xfcn", "red"]
    answer = client.post("/predict", files={"file": ("a.png", (run.folder / "data" / "val" / "red" / "red_0.png")
                                                     .read_bytes(), "image/png")})
    assert answer.status_code == 200 and set(answer.json()["probabilities"]) == {"blue", "gr\\xfcn", "red"}, answer.text


@pytest.mark.slow  # the real CLI in a process of its own, one per case
def test_skip_bad_images_drops_and_counts_each_one(launched):
    """One run with every skippable kind: one warning per file, then the totals; training goes on."""
    run = launched["skip"]
    proc = run.proc
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "skipped bad image" in line]
    assert len(warnings) == len(run.bad), proc.stderr
    for path in run.bad:
        assert sum(_shown(str(path.relative_to(run.folder))) in w for w in warnings) == 1, (path, proc.stderr)
    n_val = sum(1 for p in run.bad if "val" in p.parts)
    assert f"skipped {len(run.bad) - n_val} of {8 + len(run.bad) - n_val} images" in proc.stderr, proc.stderr
    assert f"skipped {n_val} of {4 + n_val} images" in proc.stderr, proc.stderr
    metrics = json.loads((run.folder / "run" / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["test_images"]) == (8, 4)


@pytest.mark.parametrize("case", ARCHIVES, ids=_ids(ARCHIVES))
def test_archive_is_refused_and_nothing_is_written(case, tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))
    served = tmp_path / "srv" / "deep" / "er"
    served.mkdir(parents=True)
    archive = case.archive(served)
    server = serve_directory(served)
    try:
        with pytest.raises(TransferlabError) as info:
            D.hotdog_root(url=f"http://127.0.0.1:{server.server_port}/hotdog.zip",
                          sha1=hashlib.sha1(archive.read_bytes()).hexdigest())
    finally:
        server.shutdown()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in case.needles), message
    assert list((tmp_path / "home" / "datasets").iterdir()) == []  # no dataset, no half-extracted temp folder
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path.parent / "escaped.txt").exists()
