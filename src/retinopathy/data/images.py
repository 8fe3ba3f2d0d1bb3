"""Finding and decoding fundus photographs.

Large JPEGs are decoded at reduced scale with Pillow's ``draft()``: a 4752x3168 photo that will become
512 px is decoded at 1/4 scale (1188x792), which is several times faster than a full decode. A photograph
with an EXIF orientation (a phone's, or one turned in a photo app) is turned as a viewer shows it.
Pillow's decompression-bomb limit stays on, and truncated files are errors (``LOAD_TRUNCATED_IMAGES``
is never set).
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import RetinopathyError
from .preprocess import find_fov

warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")  # Pillow's words on a
# damaged EXIF ("Corrupt EXIF data", "Truncated File Read", ...), naming no file, once per process: the EXIF (read
# for the orientation) is not the photograph; a turn it no longer gives is not made

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jfif", ".jpe")  # .jfif, .jpe: JPEGs
# as Chrome on Windows saves them (last: a name with other files beside them reads those, as before)
EMPTY = "empty file (0 bytes); replace it, or remove it (and its row in the labels, if any)"
BLANK_LEVEL = 8  # an image whose brightest 1 % of pixels stay below this (of 255) shows no retina
DIM_LEVEL = 40  # ... below this, a retina too dark to trust (real photographs: 87 and up, see brightest())


class ImageError(RetinopathyError, OSError):
    """An image that cannot be used, with the file and the reason."""

    rank_local = True  # under torchrun, each process decodes its own share

    def __init__(self, path: str | os.PathLike, reason: str = ""):
        """``ImageError(path, reason)``; one argument is a whole message, as a DataLoader worker re-raises it
        (its "Caught ImageError in DataLoader worker ... Original Traceback ..." is cut to the error's line)."""
        path = str(path)
        if not reason and path.startswith("Caught ImageError"):
            path = path.rstrip().splitlines()[-1].partition("ImageError: ")[2] or path
        self.path = path
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if reason else self.path)


def index_images(folder: str | os.PathLike) -> dict[str, str]:
    """Map image name (with and without extension) to file name for the image files in ``folder``; a name with
    several files (``1_left.jpeg``, ``1_left.PNG``) takes them in the order of ``IMAGE_EXTENSIONS``. Each name is
    also keyed in Unicode NFC, so a label written in NFC finds a file named in NFD (as macOS writes names)."""
    index: dict[str, str] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return index
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for entry in sorted(entries, key=lambda e: (rank.get(os.path.splitext(e.name)[1].lower(), len(rank)), e.name)):
        stem, ext = os.path.splitext(entry.name)
        try:
            listed = entry.is_file()
        except OSError:  # a symbolic-link loop: listed, so that reading it names the error
            listed = True
        if ext.lower() in rank and listed:
            index.setdefault(stem, entry.name)
            index[entry.name] = entry.name
    for key, name in list(index.items()):  # after every name as written: a file named in NFC keeps its own
        index.setdefault(unicodedata.normalize("NFC", key), name)
    return index


def indexed(index: dict[str, str], name: str) -> str | None:
    """The file of ``name`` in an :func:`index_images` index, as written or in Unicode NFC."""
    return index.get(name) or index.get(unicodedata.normalize("NFC", name))


def hidden(name: str) -> bool:
    """A file or folder name a walk through photographs leaves out: hidden (``.x``, macOS' ``._x.jpeg``), or a NAS's
    or archiver's own (Synology's ``@eaDir`` thumbnails, ``__MACOSX``)."""
    return name.startswith((".", "@")) or name == "__MACOSX"


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, sorted, following symbolic links to folders: each real folder once, and none
    that holds ``folder`` (a link back up would bring in its siblings), nor a :func:`hidden` one; a link that leads
    nowhere is listed too, so that it gets its error. A folder that cannot be listed is an :class:`ImageError`
    (``os.walk`` leaves it out silently, and with it its photographs, a whole grade's perhaps)."""
    files, seen, top = [], set(), os.path.realpath(folder)
    for root, dirs, names in os.walk(folder, onerror=_unlisted, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or top.startswith(real.rstrip(os.sep) + os.sep):
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not hidden(d)]
        files += [Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not hidden(n)
                  and ((Path(root) / n).is_file() or not (Path(root) / n).exists())]  # a broken link: listed
    return sorted(files)


def _unlisted(e: OSError) -> None:
    if not isinstance(e, FileNotFoundError):  # gone since it was listed: nothing there to leave out
        raise ImageError(e.filename, f"cannot list this folder ({e.strerror}), so its photographs would be left "
                         "out; make it readable (chmod a+rx), or move it out of the dataset")


def not_utf8(path: str | os.PathLike) -> str | None:
    """``path`` as it can be shown (its bytes escaped) when its name is not valid UTF-8 (a Latin-1 name, which
    Python lists with surrogate escapes that no UTF-8 output can hold), else None."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


NOT_UTF8 = ("the name is not valid UTF-8 (written in another encoding), which the outputs (split.csv, "
            "predictions.csv, the model card) cannot hold; rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 --notest)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: grey, palette, alpha (onto black), CMYK and 16-bit images."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = (65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else
               1.0 if img.mode == "F" and arr.max() <= 1 else 255.0)  # float images in 0-1 (scientific TIFFs)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def brightest(img: Image.Image) -> float:
    """How bright (0-255) the brightest 1 % of ``img``'s pixels are: below :data:`BLANK_LEVEL` there is no retina
    to grade (real photographs: 87 and up, measured on fundus-real and eyepacs-256)."""
    return float(np.percentile(np.asarray(img.convert("L")), 99))


def colourless(img: Image.Image) -> bool:
    """Whether ``img`` has no colour: its channels within 8 of each other at 99 % of its pixels (a grey photograph,
    red-free ones often, stored as RGB; JPEG's rounding leaves them a little apart), counted on about 256 px."""
    step = max(1, min(img.size) // 256)
    a = np.asarray(img)[::step, ::step].astype(np.int16)
    spread = a.max(axis=2) - a.min(axis=2)
    return np.count_nonzero(spread > 8) <= 0.01 * spread.size


NOTES = {"black": "nearly black (its brightest pixels reach {level} of 255): no retina to grade, so its grade means "
                  "nothing",  # why one image's grade is doubtful (:func:`doubt`), as its row or report says it
         "dark": "very dark (its brightest 1 % reaches {level} of 255; photographs reach 87 and up): under-exposed, "
                 "or 12-bit values stored in a 16-bit file, read on the 16-bit scale; its grade is doubtful",
         "small": "small ({size} px, enlarged to {input} px): its grade is doubtful",
         "narrow": "{size} px, sides {ratio}, far from a photograph of the eye's (about 3:2; photographs side by side, "
                   "or a strip): its grade is doubtful",
         "grey": "no colour (a grey photograph, as red-free ones often are), which a model of colour photographs has "
                 "not seen: its grade is doubtful"}


def doubt_fields(level: float, sides: tuple[int, int], size: int = 0) -> dict:
    """An image's numbers as the words of a :func:`doubt` say them: ``level``, ``size`` (its sides), ``input`` (the
    model's input size) and ``ratio``."""
    w, h = sides
    return {"level": f"{level:.0f}", "size": f"{w}x{h}", "input": size,
            "ratio": f"{max(w, h) / max(min(w, h), 1):.1f}:1"}


def doubt_note(kind: str, level: float, sides: tuple[int, int], size: int = 0) -> str:
    """:data:`NOTES`' words for a :func:`doubt` ``kind``, with the image's numbers (:func:`doubt_fields`)."""
    return NOTES[kind].format(**doubt_fields(level, sides, size))


def doubt(level: float, sides: tuple[int, int], size: int, grey: bool = False) -> str:
    """Why a grade of an image (its :func:`brightest` ``level``, its ``sides`` as decoded for a model input of
    ``size`` px, whether it is :func:`colourless`) would be doubtful, or '': ``black`` (no retina), ``dark``,
    ``small`` (enlarged more than twice), ``narrow`` (sides more than 2:1; photographs are about 3:2) or ``grey``
    (a grey or red-free photograph, which a model of colour photographs has not seen)."""
    return ("black" if level < BLANK_LEVEL else "dark" if level < DIM_LEVEL else
            "small" if 2 * min(sides) < size else "narrow" if max(sides) > 2 * min(sides) else
            "grey" if grey else "")


def _refuse_unreadable(path: Path, e: Exception) -> None:
    """Raise :class:`ImageError` for a file the system would not read (missing, permission denied, an I/O error:
    ``errno`` set), which says nothing about the image; Pillow's decoding errors carry no ``errno``."""
    if not isinstance(e, OSError) or not isinstance(e.errno, int):
        return
    if isinstance(e, FileNotFoundError):
        raise ImageError(path, f"a symbolic link to {os.readlink(path)}, which is not there; point it at the "
                               "photograph, or remove it" if path.is_symlink() else "file not found") from None
    if isinstance(e, IsADirectoryError):
        raise ImageError(path, "a folder, not an image file; name an image in it") from None
    if isinstance(e, PermissionError):
        raise ImageError(path, "cannot read it: permission denied; let the user running retinopathy read it "
                               "(chmod a+r, and a+x on its folders), or remove it") from None
    if e.errno == errno.ELOOP:
        raise ImageError(path, "a symbolic link that leads back to itself (a loop), not to a photograph; point it at "
                               "the photograph, or remove it") from None
    raise ImageError(path, f"cannot read it: {e.strerror or e} (the file system's error, not the image's); check the "
                           "file and its disk, or copy it again") from None


@contextlib.contextmanager
def _image_errors(path: Path, undecodable):
    """Turn what reading ``path`` raises into :class:`ImageError`: the file system's errors, Pillow's refusals, and
    a decoding failure, worded by ``undecodable(reason)``."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"rejected as a decompression bomb ({e}); shrink it or raise "
                               "PIL.Image.MAX_IMAGE_PIXELS knowingly") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format); re-export or remove it") from None
    except (OSError, SyntaxError, ValueError) as e:
        _refuse_unreadable(path, e)
        raise ImageError(path, undecodable(str(e) or type(e).__name__)) from None


def _cannot_decode(reason: str) -> str:
    if "truncated" in reason.lower():
        return f"cannot decode: truncated image ({reason}); the file is incomplete, copy it again"
    return f"cannot decode: {reason}; the file is damaged: copy or export it again, or remove it"


FOV_SLACK = 0.8  # a field of view up to 1.25 times upscaled is decoded as the frame is (a retina that about fills
# the frame's short side, as in EyePACS, is a little narrower than it: every such photograph would be decoded twice)


def open_image(path: str | os.PathLike, min_size: int | None = None, fov: bool = False) -> Image.Image:
    """Decode ``path`` to an RGB image; with ``min_size`` a JPEG is decoded at the smallest scale whose
    both sides are at least ``min_size`` (``Image.draft``). With ``fov`` (for the presets that crop to it), one
    whose round field of view is narrower than ``FOV_SLACK`` x ``min_size`` at that scale (a small retina in a large
    frame, which the crop would upscale) is decoded again at the scale that gives it ``min_size`` across. Raises
    :class:`ImageError` with the reason."""
    path = Path(path)
    with _image_errors(path, _cannot_decode):
        if path.stat().st_size == 0:
            raise ImageError(path, EMPTY)
        img, full = _decode(path, min_size)
        if fov and min_size and img.size != full:
            circle = find_fov(img)
            if 2 * circle[2] < FOV_SLACK * min_size:
                img, _ = _decode(path, math.ceil(min(img.size) * min_size / max(2 * circle[2], 1)))
            else:  # FovCrop's circle, found already; an image made from this one does not inherit it, and one
                img.fov = (img.size, circle)  # resized in place (thumbnail) is fitted again
        return img


TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}  # EXIF orientation -> what turns the stored pixels upright


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened (not yet loaded) image, 1 (as stored) when it has none or one that cannot
    be read (a damaged EXIF is not a damaged photograph); read from its header, without decoding it (a PNG's EXIF
    after its pixels is not looked for: Pillow would decode them)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        turn = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds on malformed entries
        return 1
    return turn if turn in TURNS else 1


def upright_size(img: Image.Image, turn: int | None = None) -> tuple[int, int]:
    """The size of an opened image as a viewer shows it: its sides swapped by an :func:`orientation` (``turn``, when
    read already) that turns it a quarter (5-8)."""
    return img.size[::-1] if (orientation(img) if turn is None else turn) in (5, 6, 7, 8) else img.size


def _decode(path: Path, side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """``path`` decoded to RGB and turned upright (its :func:`orientation`), a JPEG at the smallest scale whose
    sides are at least ``side``; and its full size, upright."""
    with Image.open(path) as img:
        turn = orientation(img)
        full = upright_size(img, turn)
        if side and img.format in ("JPEG", "MPO"):  # MPO: a camera JPEG with a second image
            img.draft("RGB", (side, side))
        img.load()
        return to_rgb(img.transpose(TURNS[turn]) if turn in TURNS else img), full


def _jpeg_scan_start(f) -> int | None:
    """Offset of the first scan's data in a JPEG, or None: the segments after SOI are skipped by their
    lengths, so an EXIF thumbnail (with its own EOI) is never looked into."""
    pos = 2
    while True:
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4:
            return None
        if head[0] != 0xFF or head[1] == 0xFF:  # junk or fill byte before a marker (Pillow skips them too)
            pos += 1
        elif 0xD0 <= head[1] <= 0xD9 or head[1] == 0x01:  # RSTn, SOI, EOI, TEM: no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(head[2:], "big")
            if head[1] == 0xDA:  # SOS
                return pos


def _jpeg_complete(path: Path, size: int) -> bool:
    """Whether a JPEG has its end marker (EOI, FF D9) after the start of its first scan.

    Scan data stuffs a data byte FF as FF 00, so the first FF D9 there is the image's end (progressive
    JPEGs too). It is looked for in the last 4 KiB first, then, for files with a trailer after the
    image (as some phones append), from the scan on.
    """
    with open(path, "rb") as f:
        start = _jpeg_scan_start(f)
        if start is None:
            return False
        f.seek(max(start, size - 4096))
        if b"\xff\xd9" in f.read():
            return True
        f.seek(start)
        return b"\xff\xd9" in f.read()


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """Check that ``path`` is a usable image and return its size (width, height), upright (:func:`upright_size`).

    Catches missing, empty, unidentifiable, truncated and corrupt files without decoding a JPEG or PNG:
    a JPEG needs its end marker (EOI) after its scan data, a PNG every chunk's checksum and its IEND
    (``Image.verify``); other formats (TIFF) are decoded (``data check`` decodes everything).
    """
    path = Path(path)
    with _image_errors(path, lambda reason: f"corrupt or truncated ({reason}); re-export or remove it"):
        st = path.stat()
        if st.st_size == 0:
            raise ImageError(path, EMPTY)
        with Image.open(path) as img:
            size, fmt = upright_size(img), img.format
            if fmt == "PNG":
                img.verify()
            elif fmt != "JPEG":
                img.load()
        complete = fmt != "JPEG" or _jpeg_complete(path, st.st_size)
    if not complete:
        raise ImageError(path, "truncated JPEG (no end marker); the file is incomplete, copy it again")
    return size
