"""Issue 13 item 5: decompression bombs, truncated images and an unwritable --out give one-line errors."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from exporter.cli import main
from engines.inputs import MAX_IMAGE_PIXELS, ImageError, decode_image
from exporter.samples import synthetic_image

PROMPT = "USER: <image>\nWhat is it? ASSISTANT:"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data: a few dozen bytes, any declared size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def truncated_png() -> bytes:
    buf = io.BytesIO()
    synthetic_image(0, (200, 150)).save(buf, format="PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


BAD_IMAGES = {
    # 30000 x 30000: PIL's own bomb check refuses it while opening
    "bomb": (png_header(30000, 30000), "too large"),
    # 8000 x 8000 = 64 MP: under PIL's limits, over ours
    "over limit": (png_header(8000, 8000), "8000x8000 pixels; the limit is 50,000,000 pixels"),
    "truncated": (truncated_png(), "truncated"),
    "garbage": (b"GIF89a but not really an image", "cannot read image"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_decode_image_refuses_in_one_line(case):
    data, needle = BAD_IMAGES[case]
    with pytest.raises(ImageError) as info:
        decode_image(io.BytesIO(data), "input 'image'")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_decode_image_accepts_up_to_the_limit():
    assert MAX_IMAGE_PIXELS == 50_000_000
    buf = io.BytesIO()
    synthetic_image(1, (64, 48)).save(buf, format="PNG")
    assert decode_image(io.BytesIO(buf.getvalue()), "x").size == (64, 48)


@pytest.mark.parametrize("case", ["bomb", "truncated"])
def test_generate_bad_image_exit_2_one_line(capsys, tmp_path, case):
    path = tmp_path / "image.png"
    path.write_bytes(BAD_IMAGES[case][0])
    code = main(["generate", "--model", "llava-tiny", "--image", str(path), "--prompt", PROMPT])
    err = capsys.readouterr().err
    assert code == 2 and BAD_IMAGES[case][1] in err and len(err.strip().splitlines()) == 1


def test_export_out_under_a_file_is_one_line_and_leaves_nothing(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["export", "--model", "llava-tiny", "--out", str(blocker / "sub" / "art"), "--parity-samples", "0",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "x"
