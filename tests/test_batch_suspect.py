"""Suspect results are flagged (diffusion_lab.batch.rows.suspect_results): a row whose reconstruction or kept region
is far below the input's own VAE round trip, or whose input the VAE cannot represent, is "warning" with the
numbers, in status.json, the report and summary.json. The issue's example, a 16-bit RGBA input with a
half-transparent left half, runs on the shipped shapes-tiny (direct inversion, 10 steps)."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffusion_lab.batch.manifest import Row
from diffusion_lab.batch.report import write_report
from diffusion_lab.batch.rows import SUSPECT_DB, SUSPECT_EDIT_DB, VAE_FLOOR_DB, run_row, suspect_results
from diffusion_lab.batch.runner import _entries

SOURCE = "a large red circle on a gray background"
SQUARE = "a large red square on a gray background"


def png16_rgba(pixels: np.ndarray) -> bytes:
    """(H, W, 4) uint16 -> the bytes of a 16-bit RGBA PNG (PIL cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_thresholds_and_messages_give_the_numbers():
    fine = {"reconstruction": {"psnr": 34.6}, "vae_round_trip": {"psnr": 34.7, "background_psnr": 40.0},
            "targets": [{"background_psnr_to_input": 33.0}]}
    assert suspect_results(fine) == [] and (SUSPECT_DB, SUSPECT_EDIT_DB, VAE_FLOOR_DB) == (10, 15, 20)
    lost = {**fine, "reconstruction": {"psnr": 21.5}}
    assert suspect_results(lost) == [suspect_results(lost)[0]] and "21.50 dB, 13.2 dB below the input's own VAE " \
        "round trip (34.70 dB; flagged at 10 dB below)" in suspect_results(lost)[0]
    moved = {**fine, "targets": [{"background_psnr_to_input": 29.5}, {"background_psnr_to_input": 24.5}]}
    assert len(suspect_results(moved)) == 1 and "edit 2 keeps the background (outside the objects) at 24.50 dB, " \
        "15.5 dB below the input's own VAE round trip there (40.00 dB; flagged at 15 dB below)" in suspect_results(moved)[0]
    unrepresentable = {"reconstruction": {"psnr": 12.98}, "vae_round_trip": {"psnr": 12.98}, "targets": []}
    assert "VAE round trip is 12.98 dB (flagged below 20 dB)" in suspect_results(unrepresentable)[0]
    assert suspect_results({"targets": [{"psnr_to_source": 9.0}]}) == []  # a generated row: nothing to compare to


def test_help_states_the_thresholds():
    import argparse

    from diffusion_lab.batch.runner import add_arguments

    text = " ".join(add_arguments(argparse.ArgumentParser()).format_help().split())
    for said in ("more than 10 dB below the input's own VAE round trip", "more than 15 dB below it",
                 "round trip below 20 dB", "--allow-images-outside"):
        assert said in text, said


@pytest.fixture(scope="module")
def shapes_tiny():
    from diffusion_lab.models import load_pipeline

    return load_pipeline("shapes-tiny")


def test_a_half_transparent_16_bit_input_is_a_warning_with_its_numbers(tmp_path, shapes_tiny):
    """It was composited on white (with a warning) and marked ok at 12.98 dB, the red circle green, unflagged."""
    from diffusion_lab.shapes import random_scene, render_image

    scene = random_scene(5, num_objects=1, objects=[{"shape": "circle", "colour": "red", "size": "large"}],
                         background="gray")
    rgb = np.asarray(render_image(scene).convert("RGB"))  # (H, W, 3) uint8
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    rgba = np.concatenate([rgb.astype(np.uint16) * 257, np.full(rgb.shape[:2] + (1,), 65535, np.uint16)], axis=-1)
    rgba[:, : rgb.shape[1] // 2, 3] = 32768  # the left half half-transparent
    (tmp_path / "rgba16.png").write_bytes(png16_rgba(rgba))
    out = tmp_path / "out"
    statuses, rows = {}, []
    for number, name in enumerate(("plain", "rgba16"), start=1):
        spec = {"id": name, "key": f"k-{name}", "image": {"kind": "file", "path": str(tmp_path / f"{name}.png")},
                "seed": 0, "num_steps": 10, "guidance_scale": 5.0, "inversion": {"method": "direct", "options": {}},
                "edit": {"source_prompt": SOURCE, "target_prompts": [SQUARE], "edit": "replace"}}
        statuses[name] = run_row(shapes_tiny, spec, out, "shapes-tiny", {"run": "r", "chunk": None, "notebook": None})
        rows.append(Row(number, name, spec))
    assert statuses["plain"]["status"] == "ok" and statuses["plain"]["suspect"] == []
    flagged = statuses["rgba16"]
    assert flagged["status"] == "ok" and len(flagged["suspect"]) == 1, flagged  # done: not redone on a rerun
    metrics = json.loads((out / "rows" / "rgba16" / "metrics.json").read_text())
    ceiling = metrics["vae_round_trip"]["psnr"]
    assert ceiling < VAE_FLOOR_DB and f"VAE round trip is {ceiling:.2f} dB" in flagged["suspect"][0]
    assert any("composited on white" in warning for warning in flagged["warnings"])

    entries = _entries(out, None, rows, [], {"plain": "k-plain", "rgba16": "k-rgba16"})
    assert [entry["state"] for entry in entries] == ["ok", "warning"]
    paths = write_report(out, entries, {"run": "r"})
    summary = json.loads(paths["summary"].read_text())
    assert summary["counts"]["warning"] == 1 and summary["counts"]["ok"] == 1
    assert summary["rows"][1]["warning"] == flagged["suspect"]
    report = paths["markdown"].read_text()
    assert "1 ok, 1 warning" in report and f"{ceiling:.2f} dB (flagged below 20 dB)" in report
