"""The manifest's image-path policy (relative to the manifest's folder; paths leaving it refused unless
--allow-images-outside), exact integer bounds, and invalid rows shown in the report as their author wrote them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_lab.batch import read_manifest, validate_manifest
from diffusion_lab.batch.manifest import number_text
from diffusion_lab.batch.report import write_report
from diffusion_lab.batch.runner import _entries, load_tokenizer, main

SOURCE = "a large red circle on a gray background"
SQUARE = "a large red square on a gray background"
BLUE = "a large blue circle on a gray background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("model") / "shapes-tiny-untrained"
    build_untrained_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(str(model_dir))


def image_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path)
    return path


def test_image_paths_stay_in_the_manifests_folder_unless_allowed(tmp_path, tokenizer):
    """'../../x' read a file outside the manifest's folder without comment."""
    folder = tmp_path / "course" / "batch"
    image_at(folder / "images" / "inside.png")
    outside = image_at(tmp_path / "secret.png")
    os.symlink(outside, folder / "images" / "link.png")
    rows = {"inside": "images/inside.png", "up": "../../secret.png", "absolute": str(outside),
            "link": "images/link.png", "missing-outside": "../nothing.png"}
    lines = [f"- {{id: {row_id}, image: '{path}', source_prompt: {SOURCE}, target_prompts: [{SQUARE}]}}"
             for row_id, path in rows.items()]
    manifest = read_manifest(_write(folder / "m.yaml", "\n".join(lines) + "\n"))
    valid, invalid = validate_manifest(manifest, tokenizer, 50, 5.0)
    assert [row.id for row in valid] == ["inside"]
    assert valid[0].spec["image"]["path"] == str((folder / "images" / "inside.png").resolve())  # from its folder
    messages = {bad.id: bad.message for bad in invalid}
    assert set(messages) == {"up", "absolute", "link", "missing-outside"}
    assert (f"image '../../secret.png' resolves to '{outside.resolve()}', outside the manifest's folder "
            f"'{folder.resolve()}'") in messages["up"]
    assert all("pass --allow-images-outside" in message for message in messages.values())
    assert "not found" not in messages["missing-outside"]  # refused before it is looked at
    valid, invalid = validate_manifest(manifest, tokenizer, 50, 5.0, allow_images_outside=True)
    assert [row.id for row in valid] == ["inside", "up", "absolute", "link"]
    assert "not found" in invalid[0].message


def test_the_command_refuses_an_image_outside_and_says_which_flag_allows_it(tmp_path, model_dir, capsys):
    image_at(tmp_path / "x.png")
    manifest = _write(tmp_path / "sub" / "m.yaml",
                      f"- {{id: up, image: ../x.png, source_prompt: {SOURCE}, target_prompts: [{SQUARE}]}}\n")
    command = [str(manifest), "--out", str(tmp_path / "out"), "--model", str(model_dir), "--validate-only"]
    assert main(command) == 2
    assert "outside the manifest's folder" in capsys.readouterr().err
    assert main(command + ["--allow-images-outside"]) == 0


def test_bounds_are_exact_integers():
    assert number_text(2**32 - 1) == "4294967295" and number_text(4294967296.0) == "4294967296"
    assert number_text(1e-6) == "1e-06" and number_text(1.5) == "1.5" and number_text(1e300) == "1e+300"
    assert number_text(10**23) == "1e+23" and number_text(-1) == "-1"


def test_invalid_rows_show_their_prompts_and_edit_as_written(tmp_path, tokenizer):
    """The report showed an invalid row's target prompts as a Python list (['a ...', 'b ...']) and an empty edit."""
    text = (f"defaults: {{num_steps: 5}}\nrows:\n"
            f"  - {{id: bad-seed, source_prompt: {SOURCE}, target_prompts: [{SQUARE}, {BLUE}], seed: -1}}\n"
            f"  - {{id: bad-edit, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], edit: swap}}\n")
    manifest = read_manifest(_write(tmp_path / "m.yaml", text))
    valid, invalid = validate_manifest(manifest, tokenizer, 50, 5.0)
    assert not valid
    out = tmp_path / "out"
    paths = write_report(out, _entries(out, manifest, valid, invalid, {}), {"model": "m"})
    markdown = paths["markdown"].read_text()
    assert f"{SOURCE} -> {SQUARE} \\| {BLUE}" in markdown and "['" not in markdown
    lines = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| 1 ") or
             line.startswith("| 2 ")}
    assert "| replace (the default) |" in lines["bad-seed"] and "| swap |" in lines["bad-edit"]
    assert "seed must be between 0 and 4294967295, got -1" in lines["bad-seed"]
    assert json.loads(paths["summary"].read_text())["counts"]["invalid"] == 2


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
