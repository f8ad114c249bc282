"""Batch editing (diffusion_lab.batch): manifest validation, safe and atomic files, the report, and whole runs
through papermill on the UNTRAINED shapes-tiny architecture (saved to a temporary folder) with 4-step edits:
a run killed midway and resumed, and the Dask LocalCluster path."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_lab.batch import files, read_manifest, run_batch, validate_manifest
from diffusion_lab.batch.manifest import ManifestError, Row, row_key, sanitize_id
from diffusion_lab.batch.report import report_ids, write_report
from diffusion_lab.batch.runner import load_tokenizer, model_fingerprint

REPO = Path(__file__).resolve().parent.parent
SOURCE = "a large red circle on a gray background"
SQUARE = "a large red square on a gray background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The shapes-tiny architecture with random weights, saved like a checkpoint (the shipped weights change
    while training runs; these do not)."""
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("model") / "shapes-tiny-untrained"
    build_untrained_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(str(model_dir))


@pytest.fixture
def png(tmp_path):
    from diffusion_lab.shapes import random_scene, render_image

    path = tmp_path / "input.png"
    render_image(random_scene(5, num_objects=1, objects=[{"shape": "circle", "colour": "red", "size": "large"}],
                              background="gray")).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def all_files_complete(folder: Path) -> list[Path]:
    """Every visible file parses (JSON, notebooks) or decodes (PNG): nothing half-written under its final name."""
    checked = []
    for path in folder.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix in (".json", ".ipynb"):
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        checked.append(path)
    return checked


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.suffix == ".tmp" or p.name.endswith(".partial.ipynb")]


# -- manifests ------------------------------------------------------------------------------------------------


MIXED_CSV = """id,image,scene_seed,source_prompt,target_prompts,edit,blend_words,inversion,num_steps
good-generated,,,{source},{square},replace,,,4
good-image,{png},,{source},{square},replace,,negative_prompt,4
missing-file,nowhere.png,,{source},{square},replace,,,4
unreadable,{text},,{source},{square},replace,,,4
bad-edit,,,{source},{square},swap,,,4
bad-word,,,{source},a large red banana on a gray background,replace,,,4
token-count,,,{source},a large red square on a gray background and a blue star,replace,,,4
good-scene,,4,,a large cyan star on a gray background,local_blend,cross|star,negative_prompt,4
../escape,,,{source},{square},replace,,,4
good-generated,,,{source},{square},refine,,,4
inversion-without-image,,,{source},{square},replace,,ddim,4
"""


def mixed_manifest(tmp_path, png) -> Path:
    text_file = write(tmp_path / "notes.png", "not an image")
    return write(tmp_path / "mixed.csv", MIXED_CSV.format(source=SOURCE, square=SQUARE, png=png, text=text_file.name))


def test_mixed_manifest_gives_one_clear_message_per_bad_row(tmp_path, png, tokenizer):
    valid, invalid = validate_manifest(read_manifest(mixed_manifest(tmp_path, png)), tokenizer, 50, 5.0)
    assert [row.id for row in valid] == ["good-generated", "good-image", "good-scene"]
    messages = {bad.number: bad.message for bad in invalid}
    assert "not found" in messages[3] and "nowhere.png" in messages[3] and "line 4" in messages[3]
    assert "unreadable" in messages[4] and "notes.png" in messages[4]
    assert "unknown edit 'swap'" in messages[5] and "local_blend" in messages[5]
    assert "'banana'" in messages[6] and "vocabulary" in messages[6] and "target prompt 1" in messages[6]
    assert "token" in messages[7].lower() and "refine" in messages[7]
    assert "plain name" in messages[9]
    assert "used by row 1" in messages[10]
    assert "no image to invert" in messages[11]
    assert len(invalid) == 8
    scene = valid[2].spec
    assert scene["image"]["kind"] == "scene" and scene["edit"]["source_prompt"] == "a large cyan cross on a gray background"
    assert scene["edit"]["blend_words"] == ["cross", "star"] and scene["edit"]["edit"] == "replace"
    assert valid[1].spec["image"]["sha256"] and valid[1].spec["inversion"] == {"method": "negative_prompt", "options": {}}
    assert valid[0].spec["guidance_scale"] == 5.0 and valid[0].spec["num_steps"] == 4 and valid[0].spec["inversion"] is None


def test_invalid_rows_stop_the_run_before_any_work(tmp_path, png, model_dir):
    out = tmp_path / "out"
    result = run_batch(mixed_manifest(tmp_path, png), out, str(model_dir), progress=False, log=lambda m: None)
    assert result.exit_code == 2 and len(result.invalid) == 8
    assert not out.exists()


def test_yaml_defaults_and_examples_validate(tmp_path, tokenizer):
    manifest = write(tmp_path / "m.yaml", f"""
defaults: {{num_steps: 7, inversion: ddim, guidance_scale: 3}}
rows:
  - {{source_prompt: {SOURCE}, target_prompts: {SQUARE}, seed: 2}}
  - {{id: "my row #2", scene_seed: 1, target_prompts: [a small green circle on a navy background], edit: refine,
      reweight: "green:2"}}
""")
    valid, invalid = validate_manifest(read_manifest(manifest), tokenizer, 50, 5.0)
    assert not invalid, [bad.message for bad in invalid]
    first, second = (row.spec for row in valid)
    assert first["id"] == "row-0001" and first["num_steps"] == 7 and first["inversion"] is None  # default skipped
    assert second["id"] == "my_row__2" and second["inversion"]["method"] == "ddim"
    assert second["edit"]["reweight"] == {"green": 2.0} and second["guidance_scale"] == 3.0
    for example in ("batch_manifest.yaml", "batch_manifest.csv"):
        valid, invalid = validate_manifest(read_manifest(REPO / "examples" / example), tokenizer, 50, 5.0)
        assert len(valid) == 5 and not invalid, [bad.message for bad in invalid]
    with pytest.raises(ManifestError, match="unknown column.*'num_step' \\(did you mean 'num_steps'\\?\\)"):
        read_manifest(write(tmp_path / "bad.csv", "id,num_step\nx,4\n"))


BOUND_ROWS = f"""
defaults: {{num_steps: 4}}
rows:
  - {{id: steps, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], num_steps: 1e9}}
  - {{id: seed, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], seed: 1e23}}
  - {{id: guidance, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], guidance_scale: 1e300}}
  - {{id: inner, scene_seed: 1, target_prompts: [{SQUARE}], inversion_options: {{inner_steps: 1e8}}}}
  - {{id: scene-seed, scene_seed: -1, target_prompts: [{SQUARE}]}}
  - {{id: threshold, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], blend_words: [circle], blend_threshold: 2}}
  - {{id: reweight, source_prompt: {SOURCE}, target_prompts: [{SOURCE}], edit: reweight, reweight: {{red: 1e6}}}}
  - {{id: fraction, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], cross_replace_steps: [0, 1.5]}}
  - {{id: empty-source, source_prompt: "", target_prompts: [{SQUARE}]}}
  - {{id: empty-target, source_prompt: {SOURCE}, target_prompts: ["", {SQUARE}]}}
  - {{id: fine, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], seed: 4294967295, guidance_scale: 30}}
  - {{id: loop, scene_seed: 1, target_prompts: [{SQUARE}], inversion_options: {{null_text_settings: slow}}}}
  - {{id: papers-loop, scene_seed: 1, target_prompts: [{SQUARE}], inversion_options: {{null_text_settings: Paper}}}}
"""


def test_every_numeric_field_is_bounded_and_the_message_gives_the_bound(tmp_path, tokenizer):
    """num_steps 1e9, seed 1e23, guidance 1e300 and inner_steps 1e8 passed validation and failed (or gave
    black images) at run time; an empty prompt got a word-swap message about token counts."""
    valid, invalid = validate_manifest(read_manifest(write(tmp_path / "m.yaml", BOUND_ROWS)), tokenizer, 50, 5.0)
    assert [row.id for row in valid] == ["fine", "papers-loop"]
    assert valid[1].spec["inversion"]["options"] == {"null_text_settings": "paper"}  # a manifest can pick the loop
    messages = {bad.id: bad.message for bad in invalid}
    assert "inversion_options.null_text_settings must be one of fast, paper" in messages["loop"]
    assert "num_steps must be between 1 and 1000" in messages["steps"]
    assert "seed must be between 0 and 4294967295, got 1e+23" in messages["seed"]  # not 4.29497e+09
    assert "guidance_scale must be between 1 and 30, got 1e+300" in messages["guidance"]
    assert "inversion_options.inner_steps must be between 1 and 100" in messages["inner"]
    assert "scene_seed must be between 0" in messages["scene-seed"]
    assert "blend_threshold must be between 0 and 1" in messages["threshold"]
    assert "reweight['red'] must be between -10 and 10" in messages["reweight"]
    assert "cross_replace_steps must be between 0 and 1, got 1.5" in messages["fraction"]
    assert "source_prompt is empty" in messages["empty-source"] and "token" not in messages["empty-source"]
    assert "target prompt 1 is empty" in messages["empty-target"]


def test_csv_separators_and_unknown_columns(tmp_path):
    with pytest.raises(ManifestError, match="semicolons but no commas"):
        read_manifest(write(tmp_path / "semi.csv", f"id;source_prompt;target_prompts\nx;{SOURCE};{SQUARE}\n"))
    with pytest.warns(UserWarning, match=r"\['comment'\] are not manifest fields and are ignored"):
        parsed = read_manifest(write(tmp_path / "extra.csv", f"id,source_prompt,target_prompts,comment\nx,{SOURCE},{SQUARE},mine\n"))
    assert parsed.rows[0].values == {"id": "x", "source_prompt": SOURCE, "target_prompts": SQUARE}


def test_sixteen_bit_grey_png_is_scaled_not_clipped_white(tmp_path):
    from diffusion_lab.images import load_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    with pytest.warns(UserWarning, match="16-bit grey levels scaled"):
        pixels = np.array(load_image(tmp_path / "grey16.png"))
    assert pixels.shape == (64, 64, 3) and pixels.min() == 0 and pixels.max() == 255
    assert abs(pixels.mean() - 127.5) < 1.0  # a ramp, not a white image (PIL's convert gave mean 254.5)


def test_batch_json_is_strict(tmp_path):
    with pytest.raises(ValueError, match="JSON compliant"):
        files.atomic_write_json(tmp_path / "m.json", {"psnr_to_source": float("inf")})
    assert not (tmp_path / "m.json").exists() and not leftovers(tmp_path)


def test_garbage_outputs_fail_the_row(tmp_path, model_dir):
    """guidance_scale 1e300 (a hand-written chunk file: validation refuses it) sampled black images that were
    marked ok with psnr_to_source Infinity; now the row fails and says why."""
    from diffusion_lab.batch.rows import GarbageOutputError, check_outputs, run_row
    from diffusion_lab.models import load_pipeline

    grey = np.full((8, 8, 3), 128, np.uint8)
    with pytest.raises(GarbageOutputError, match="edit-1.png is one constant colour"):
        check_outputs({"source.png": np.arange(192, dtype=np.uint8).reshape(8, 8, 3), "edit-1.png": grey}, {})
    with pytest.raises(GarbageOutputError, match=r"targets\[0\].psnr_to_source is inf \(the images are identical\)"):
        check_outputs({}, {"targets": [{"psnr_to_source": float("inf")}]})
    check_outputs({"input.png": grey, "comparison.png": grey}, {"x": 1.0})  # the input and figures may be flat

    pipe = load_pipeline(str(model_dir))
    spec = {"id": "black", "key": "k", "image": {"kind": "generated"}, "seed": 0, "num_steps": 2,
            "guidance_scale": 1e300, "inversion": None,
            "edit": {"source_prompt": SOURCE, "target_prompts": [SQUARE], "edit": "replace"}}
    status = run_row(pipe, spec, tmp_path, str(model_dir), {"run": "r", "chunk": None, "notebook": None})
    assert status["status"] == "failed" and status["error_type"] == "GarbageOutputError", status["error"]
    assert "constant colour" in status["error"] or "NaN" in status["error"]
    assert json.loads((tmp_path / "rows" / "black" / "status.json").read_text())["status"] == "failed"


def test_row_key_depends_on_content_and_model_not_on_id_or_path(tmp_path):
    spec = {"id": "a", "image": {"kind": "file", "path": "/x/a.png", "sha256": "abc"}, "edit": {"edit": "replace"},
            "notes": "n", "seed": 0}
    moved = {**spec, "id": "b", "notes": None, "image": {**spec["image"], "path": "/y/b.png"}}
    assert row_key(Row(1, "a", spec), "m1") == row_key(Row(2, "b", moved), "m1")
    assert row_key(Row(1, "a", spec), "m1") != row_key(Row(1, "a", spec), "m2")
    assert row_key(Row(1, "a", spec), "m1") != row_key(Row(1, "a", {**spec, "seed": 1}), "m1")


def test_blend_mask_style_is_a_validated_column_and_keeps_old_keys(tmp_path, tokenizer):
    """blend_mask_style (PromptEdit's, LocalBlend's mask_style) is an optional manifest column: a bad value is a
    clear row error; "ours" (the mask of every row before the column existed) and a row without blend_words keep
    the keys they had; a blended row that takes the default (official) mask gets the official mask's key."""
    blend = "blend_words: [circle, square]"
    manifest = write(tmp_path / "m.yaml", f"""
rows:
  - {{id: default, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], {blend}}}
  - {{id: ours, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], {blend}, blend_mask_style: Ours}}
  - {{id: official, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], {blend}, blend_mask_style: official}}
  - {{id: no-blend, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], blend_mask_style: ours}}
  - {{id: plain, source_prompt: {SOURCE}, target_prompts: [{SQUARE}]}}
  - {{id: bad, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], {blend}, blend_mask_style: paper}}
""")
    valid, invalid = validate_manifest(read_manifest(manifest), tokenizer, 50, 5.0)
    assert [bad.id for bad in invalid] == ["bad"]
    assert "blend_mask_style 'paper' is not a local-blend mask; choose one of ours, official" in invalid[0].message
    rows = {row.id: row for row in valid}
    assert rows["default"].spec["edit"]["blend_mask_style"] == "official"
    assert rows["ours"].spec["edit"]["blend_mask_style"] == "ours"
    keys = {name: row_key(row, "m") for name, row in rows.items()}
    before = {name: {**row.spec, "edit": {k: v for k, v in row.spec["edit"].items() if k != "blend_mask_style"}}
              for name, row in rows.items()}  # the rows as specs were before the column existed (our mask)
    assert keys["ours"] == row_key(Row(1, "ours", before["ours"]), "m")
    assert keys["no-blend"] == keys["plain"] == row_key(Row(1, "plain", before["plain"]), "m")
    assert keys["default"] == keys["official"] != keys["ours"]


def test_model_fingerprint_follows_the_weights(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"one")
    cache = tmp_path / "cache.json"
    first = model_fingerprint(str(folder), cache)
    assert model_fingerprint(str(folder), cache) == first
    weights.write_bytes(b"two")
    assert model_fingerprint(str(folder), cache) != first
    assert model_fingerprint("someone/never-downloaded-model").startswith("name:")


# -- files ------------------------------------------------------------------------------------------------------


def test_paths_stay_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    (out / "rows").mkdir(parents=True)
    assert files.inside(out, "rows", "ok") == (out / "rows" / "ok").resolve()
    with pytest.raises(files.UnsafePathError):
        files.inside(out, "rows", "../../elsewhere")
    (out / "rows" / "link").symlink_to(tmp_path)
    with pytest.raises(files.UnsafePathError):
        files.inside(out, "rows", "link", "x.png")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            sanitize_id(bad)
    assert sanitize_id("a b:c") == "a_b_c"


def test_atomic_writes_leave_complete_files_or_nothing(tmp_path):
    target = files.atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    with pytest.raises(TypeError):
        files.atomic_write_bytes(tmp_path / "a.json", object())  # fails while writing
    assert json.loads(target.read_text()) == {"x": 1} and not leftovers(tmp_path)
    (tmp_path / ".a.json.0123abcd.tmp").write_text("{half")
    (tmp_path / ".chunk.partial.ipynb").write_text("{half")
    assert len(files.sweep_leftovers(tmp_path)) == 2 and not leftovers(tmp_path)


def test_one_run_at_a_time_per_output_folder(tmp_path):
    with files.RunLock(tmp_path):
        with pytest.raises(files.OutputLockedError, match="another batch run"):
            files.RunLock(tmp_path).acquire()
    files.RunLock(tmp_path).acquire().release()  # released with the first run


def test_report_names_every_row(tmp_path):
    out = tmp_path / "out"
    folder = out / "rows" / "done"
    folder.mkdir(parents=True)
    for name in ("source.png", "edit-1.png"):
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / name)
    (folder / "metrics.json").write_text(json.dumps({"targets": [{"psnr_to_source": 21.5, "ssim_to_source": 0.8}]}))
    status = {"status": "ok", "key": "k", "files": ["source.png", "edit-1.png", "metrics.json"], "seconds": 1.0}
    entries = [
        {"number": 1, "id": "done", "state": "ok", "spec": {"edit": {"source_prompt": "a | b", "target_prompts": ["c"]},
                                                              "image": {"kind": "generated"}, "seed": 0}, "status": status},
        {"number": 2, "id": "broken", "state": "failed", "spec": {}, "status": {"status": "failed", "error": "Boom"}},
        {"number": 3, "id": "bad<id>", "state": "invalid", "errors": ["unknown edit 'swap'"], "values": {}},
    ]
    paths = write_report(out, entries, {"model": "m"})
    markdown, page = paths["markdown"].read_text(), paths["html"].read_text()
    for name in ("done", "broken", "unknown edit 'swap'", "Boom", "21.50"):
        assert name in markdown and name in page
    assert "bad&lt;id&gt;" in page and "a \\| b" in markdown
    assert (out / "contact-sheet-01.png").is_file() and "contact-sheet-01.png" in markdown
    counts = json.loads(paths["summary"].read_text())["counts"]
    assert counts == {"ok": 1, "warning": 0, "failed": 1, "invalid": 1, "not run": 0}
    ids = report_ids(out)
    assert len(set(ids.values())) == 1 and None not in ids.values(), ids  # the three files say they agree


def test_contact_sheet_labels_are_whole_ids(tmp_path):
    from diffusion_lab.batch.report import contact_sheets

    long_id = "a-row-id-much-longer-than-twenty-four-characters"
    folder = tmp_path / "rows" / long_id
    folder.mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "source.png")
    entry = {"id": long_id, "state": "ok", "spec": {"image": {"kind": "generated"}},
             "status": {"files": ["source.png"]}}
    short = {**entry, "id": "short"}
    (tmp_path / "rows" / "short").mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "rows" / "short" / "source.png")
    contact_sheets(tmp_path, [entry])
    wide = Image.open(tmp_path / "contact-sheet-01.png").width
    contact_sheets(tmp_path, [short])
    assert wide - Image.open(tmp_path / "contact-sheet-01.png").width >= 6 * (len(long_id) - 24)


# -- whole runs (papermill) -----------------------------------------------------------------------------------
# One run, killed midway through its chunk, then resumed on a Dask LocalCluster: kernels are the slow part (torch
# imports, model load), so both paths share one scenario to keep the suite fast.


def test_killed_run_resumes_on_dask_losing_no_row_and_repeating_none(tmp_path, model_dir, png):
    executor = "dask" if importlib.util.find_spec("distributed") else "local"  # dask comes with the dev extra
    manifest = write(tmp_path / "rows.yaml", f"""
defaults: {{num_steps: 4, guidance_scale: 5}}
rows:
  - {{id: first, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], seed: 1}}
  - {{id: second, source_prompt: {SOURCE}, target_prompts: [a large blue circle on a gray background], seed: 2}}
  - {{id: image-edit, image: {png.name}, source_prompt: {SOURCE}, target_prompts: [{SQUARE}],
      inversion: negative_prompt}}
  - {{id: bad-rate, image: {png.name}, source_prompt: {SOURCE}, target_prompts: [{SQUARE}],
      inversion: null_text, inversion_options: {{learning_rate: -1.0}}}}
  - {{id: bad-word, source_prompt: {SOURCE}, target_prompts: [a large red banana on a gray background]}}
""")
    out = tmp_path / "out"
    env = {**os.environ, "DIFFUSION_LAB_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "diffusion_lab", "batch", str(manifest), "--out", str(out),
               "--model", str(model_dir), "--chunk-size", "4", "--skip-invalid"]
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_status = out / "rows" / "first" / "status.json"
    deadline = time.monotonic() + 150
    try:
        while not first_status.exists():
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the first row did not finish in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver; its kernel notices its parent is gone and stops
        process.wait()
    time.sleep(1.5)  # ipykernel polls its parent every second

    all_files_complete(out)  # killed midway: complete files only
    before = {p.parent.name: json.loads(p.read_text()) for p in out.glob("rows/*/status.json")}
    assert before["first"]["status"] == "ok" and len(before) < 3, "the run was not killed midway"

    result = run_batch(manifest, out, str(model_dir), chunk_size=4, executor=executor, workers=1, skip_invalid=True,
                       progress=False, log=lambda m: None)
    assert result.exit_code == 1  # two rows were invalid (skipped)
    # image-edit is done but a warning: the untrained VAE cannot represent its input (round trip below 20 dB)
    assert result.counts == {"ok": 2, "warning": 1, "failed": 0, "invalid": 2, "not run": 0}
    bad_rate = next(bad for bad in result.invalid if bad.id == "bad-rate")
    assert "inversion_options.learning_rate must be between 1e-06 and 1, got -1" in bad_rate.message
    rows = {"first", "second", "image-edit"}
    assert sorted(result.skipped) == sorted(before) and sorted(result.executed) == sorted(rows - set(before))
    after = {p.parent.name: json.loads(p.read_text()) for p in out.glob("rows/*/status.json")}
    for row_id, status in before.items():  # done once, by the killed run
        assert after[row_id]["run"] == status["run"] and after[row_id]["finished"] == status["finished"]
    assert {after[row_id]["run"] for row_id in result.executed} == {result.run_id}
    assert len(result.chunks) == 1 and len(list((out / "notebooks").glob("*.ipynb"))) == 1  # one kernel, its log

    done = out / "rows" / "image-edit"
    for name in ("input.png", "source.png", "edit-1.png", "attention.png", "metrics.json", "status.json"):
        assert (done / name).is_file(), name
    metrics = json.loads((done / "metrics.json").read_text())
    assert {"psnr_to_source", "ssim_to_source"} <= set(metrics["targets"][0]) and "reconstruction" in metrics
    for report in ("report.md", "report.html"):
        text = (out / report).read_text()
        for name in (*rows, "bad-word", "banana", "bad-rate"):
            assert name in text, (report, name)
    assert (out / "contact-sheet-01.png").is_file()
    assert not leftovers(out) and all_files_complete(out)


def test_local_threads_leave_busy_cores_alone(monkeypatch):
    """Kernels get the idle cores: 2 OpenMP threads on a 2-core machine whose other core is busy ran 17x slower."""
    from diffusion_lab.batch import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (1.1, 1.0, 0.9))
    assert runner.local_threads(workers=1) == 1
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert runner.local_threads(workers=1) == 2
    assert runner.local_threads(workers=2) == 1
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (40.0, 40.0, 40.0))  # overloaded: still one thread each
    assert runner.local_threads(workers=4) == 1
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    assert runner.local_threads(workers=4) == 3


def test_unreachable_dask_scheduler_leaves_nothing_behind(tmp_path, model_dir, monkeypatch):
    pytest.importorskip("distributed")
    from diffusion_lab.batch import runner

    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT", "2s")
    manifest = write(tmp_path / "m.yaml", f"rows:\n  - {{source_prompt: {SOURCE}, target_prompts: [{SQUARE}]}}\n")
    out = tmp_path / "out"
    with pytest.raises(runner.BatchError, match="could not reach the Dask scheduler"):
        run_batch(manifest, out, str(model_dir), executor="dask", scheduler="tcp://127.0.0.1:9", progress=False,
                  log=lambda m: None)
    assert not out.exists()  # no output folder, no lock file


def test_chunks_on_an_external_scheduler_get_a_thread_count(monkeypatch):
    """With --scheduler the driver cannot know the workers' cores: the chunk picks the idle cores of its own
    machine (torch took them all in every kernel)."""
    from diffusion_lab.batch import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert runner._worker_threads() == 8  # outside a Dask worker: one task slot


def test_validation_refuses_words_the_model_was_never_trained_on(tmp_path, model_without_positions):
    """A model folder whose training_info.json lists "untrained_words" (as shapes-tiny did for positions before
    37,072 steps): validation refuses the rows that use them, before any weights are loaded."""
    from diffusion_lab.batch.runner import load_tokenizer

    manifest = tmp_path / "positions.yaml"
    import yaml

    manifest.write_text(yaml.safe_dump({"rows": [
        {"id": "cell", "source_prompt": "a red circle at the top left on a white background",
         "target_prompts": ["a blue circle at the top left on a white background"], "edit": "replace"},
        {"id": "plain", "source_prompt": "a red circle on a white background",
         "target_prompts": ["a blue circle on a white background"], "edit": "replace"},
    ]}))
    valid, invalid = validate_manifest(read_manifest(manifest), load_tokenizer(str(model_without_positions)), 50, 5.0)
    assert [row.id for row in valid] == ["plain"]
    assert len(invalid) == 1 and "never used in this model's training" in str(invalid[0])
    valid, invalid = validate_manifest(read_manifest(manifest), load_tokenizer("shapes-tiny"), 50, 5.0)
    assert [row.id for row in valid] == ["cell", "plain"] and not invalid  # the built-in model knows positions


def test_manifest_fields_follow_the_library_dataclasses():
    """The manifest's edit settings are PromptEdit's fields and its inversion options are invert's keywords that set
    NullTextSettings / FixedPointSettings: derived, not a second hand-written list."""
    import dataclasses

    from diffusion_lab.batch import manifest
    from diffusion_lab.editing import PROMPT_EDIT_KINDS, PromptEdit
    from diffusion_lab.inversion import FixedPointSettings, NullTextSettings

    settings = [f.name for f in dataclasses.fields(PromptEdit) if f.name not in ("source_prompt", "target_prompts", "edit")]
    assert list(manifest.edit_settings()) == settings and set(settings) <= set(manifest.FIELDS)
    assert manifest.EDIT_CHOICES == (*PROMPT_EDIT_KINDS, "local_blend")
    options = manifest.INVERSION_OPTIONS
    assert {"inner_steps", "learning_rate", "early_stop_epsilon"} <= set(options)
    assert {"fixed_point_iterations", "fixed_point_tolerance", "anderson_memory"} <= set(options)
    for name, kind in options.items():
        field = name.removeprefix("fixed_point_")
        owner = NullTextSettings if field in {f.name for f in dataclasses.fields(NullTextSettings)} else FixedPointSettings
        assert type(getattr(owner(), field)) is kind
        assert f"inversion_options.{name}" in manifest.BOUNDS  # every option is range-checked


# -- bad input gets one clear message and exit 2, never a traceback (new-user review) ------------------------


BLUE = "a large blue circle on a gray background"


def batch_command(*args) -> int:
    """`diffusion-lab batch ARGS` in this process: its exit code (argparse's SystemExit included)."""
    from diffusion_lab.__main__ import main

    try:
        return main(["batch", *map(str, args)])
    except SystemExit as exit:
        return exit.code


def test_os_errors_on_an_image_path_are_invalid_rows(tmp_path, tokenizer, model_dir, png, monkeypatch, capsys):
    """An image name over 255 characters crashed validation (OSError: File name too long, exit 1); a folder, a
    symbolic link loop, a pipe (which blocked the reader) and an unreadable file are each a row's message too."""
    import errno

    from diffusion_lab.batch import manifest as manifest_module

    (tmp_path / "folder").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    os.mkfifo(tmp_path / "pipe")
    locked = tmp_path / "locked.png"
    locked.write_bytes(png.read_bytes())
    images = {"long": "a" * 300 + ".png", "folder": "folder", "loop": "loop", "pipe": "pipe", "locked": locked.name,
              "below-a-file": f"{png.name}/x.png", "fine": png.name}
    path = write(tmp_path / "m.csv", "id,image,source_prompt,target_prompts,num_steps\n"
                 + "".join(f"{name},{image},{SOURCE},{BLUE},4\n" for name, image in images.items()))

    def open_unless_locked(file, *args, **kwargs):  # as root, chmod 000 does not stop reading: simulate it
        if Path(file) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "open", open_unless_locked, raising=False)
    valid, invalid = validate_manifest(read_manifest(path), tokenizer, 50, 5.0)
    assert [row.id for row in valid] == ["fine"]
    messages = {bad.id: bad.message for bad in invalid}
    assert "line 2" in messages["long"] and "too long" in messages["long"] and "304 bytes" in messages["long"]
    assert "a" * 300 not in messages["long"]  # shortened
    assert "is a folder" in messages["folder"]
    assert "symbolic link that leads to itself" in messages["loop"]
    assert "not a regular file" in messages["pipe"]
    assert "permission denied" in messages["locked"] and "readable" in messages["locked"]
    assert "not found" in messages["below-a-file"]
    monkeypatch.undo()
    long_only = write(tmp_path / "long.csv", f"id,image,source_prompt,target_prompts\nr1,{images['long']},{SOURCE},{BLUE}\n")
    assert batch_command(long_only, "--out", tmp_path / "o", "--model", model_dir, "--validate-only") == 2
    assert "invalid row 1 (line 2, id 'r1'): image file name" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, model_dir, capsys):
    """--out naming a file crashed with a FileExistsError traceback (exit 1)."""
    from diffusion_lab.batch import BatchError

    manifest = write(tmp_path / "m.csv", f"id,source_prompt,target_prompts,num_steps\nr1,{SOURCE},{BLUE},4\n")
    a_file = write(tmp_path / "taken.txt", "mine")
    assert batch_command(manifest, "--out", a_file, "--model", model_dir, "--no-progress") == 2
    assert f"error: --out must be a folder, and '{a_file}' is a file" in capsys.readouterr().err
    with pytest.raises(BatchError, match="is inside .*taken.txt', which is a file"):
        run_batch(manifest, a_file / "sub", str(model_dir), progress=False, log=lambda m: None)
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("option, value, message", [
    ("--chunk-timeout", "-5", "must be a positive number of seconds, got -5"),
    ("--chunk-timeout", "0", "must be a positive number of seconds"),
    ("--chunk-timeout", "nan", "must be a positive number of seconds"),
    ("--threads", "0", "must be at least 1, got 0"),
    ("--chunk-size", "0", "must be at least 1, got 0"),
    ("--workers", "-2", "must be at least 1, got -2"),
])
def test_bad_numbers_are_refused_when_the_arguments_are_parsed(tmp_path, capsys, option, value, message):
    """A negative --chunk-timeout was accepted (every row then failed); --threads 0 meant 'all idle cores in each
    kernel', neither the default nor a thread count."""
    manifest = write(tmp_path / "m.csv", f"id,source_prompt,target_prompts\nr1,{SOURCE},{BLUE}\n")
    assert batch_command(manifest, "--out", tmp_path / "o", option, value) == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_batch_refuses_bad_timeouts_and_thread_counts(tmp_path):
    from diffusion_lab.batch import BatchError

    with pytest.raises(BatchError, match="--chunk-timeout must be a positive number of seconds, got -1"):
        run_batch(tmp_path / "m.csv", tmp_path / "o", chunk_timeout=-1, progress=False)
    with pytest.raises(BatchError, match="--threads must be at least 1, got 0"):
        run_batch(tmp_path / "m.csv", tmp_path / "o", threads=0, progress=False)


def test_an_unclosed_quote_fails_the_manifest_at_its_line(tmp_path):
    """A quote left open read the next rows into one cell: r2 vanished and the message blamed a missing image."""
    with pytest.raises(ManifestError, match=r'line 2: the quote \(\"\) that opens the cell "x.png,a large.*'
                                            r"column 'image'.*lines 2 to 4.*close the quote on line 2 or remove it"):
        read_manifest(write(tmp_path / "open.csv", f'id,image,source_prompt,target_prompts\nr1,"x.png,{SOURCE},{BLUE}\n'
                            f"r2,,{SOURCE},{BLUE}\nr3,,{SOURCE},{BLUE}\n"))
    with pytest.raises(ManifestError, match=r"line 3: .*column 'notes'.*a cell cannot span lines"):
        read_manifest(write(tmp_path / "notes.csv", f'id,source_prompt,target_prompts,notes\nr1,{SOURCE},{BLUE},\n'
                            f'r2,{SOURCE},{BLUE},"two\nlines"\n'))
    parsed = read_manifest(write(tmp_path / "fine.csv", f'id,source_prompt,target_prompts,notes\n\nr1,{SOURCE},{BLUE},'
                                 f'"quoted, with a comma"\n\nr2,"{SOURCE}",{BLUE},\n'))
    assert [(row.number, row.line) for row in parsed.rows] == [(1, 3), (2, 5)]
    assert parsed.rows[0].values["notes"] == "quoted, with a comma"


def test_yaml_rows_have_lines_and_ids_that_share_a_folder_are_both_named(tmp_path, tokenizer):
    manifest = write(tmp_path / "m.yaml", f"""# ids
defaults: {{num_steps: 4}}
rows:
  - id: a b
    source_prompt: {SOURCE}
    target_prompts: [{BLUE}]

  - {{id: a_b, source_prompt: {SOURCE}, target_prompts: [{BLUE}]}}
  - {{id: A B, source_prompt: {SOURCE}, target_prompts: [{BLUE}]}}
  - {{id: a b, source_prompt: {SOURCE}, target_prompts: [{BLUE}]}}
""")
    valid, invalid = validate_manifest(read_manifest(manifest), tokenizer, 50, 5.0)
    assert [row.id for row in valid] == ["a_b"] and valid[0].line == 4
    messages = [bad.message for bad in invalid]
    assert messages[0].startswith("row 2 (line 8, id 'a_b'): id 'a_b' and the id 'a b' of row 1 map to the same "
                                  "output folder name 'a_b' (characters other than")
    assert "rename one of them" in messages[0]
    assert "line 9" in messages[1] and "id 'A B' and the id 'a b' of row 1" in messages[1] and "letter case" in messages[1]
    assert "line 10" in messages[2] and "id 'a b' is used by row 1 already" in messages[2]


def test_the_batch_pointers_lead_to_the_readme():
    """Four places pointed to docs/batch.md, which does not exist."""
    import argparse

    from diffusion_lab.batch.runner import add_arguments

    assert "\n## Batch editing\n" in (REPO / "README.md").read_text()
    texts = {name: (REPO / name).read_text() for name in
             ("diffusion_lab/batch/__init__.py", "examples/batch_manifest.yaml", "pipelines/batch_edit.py")}
    texts["--help"] = " ".join(add_arguments(argparse.ArgumentParser()).format_help().split())
    for name, text in texts.items():
        assert "docs/" not in text, name
        assert "the README's \"Batch editing\" section" in text, name


def test_example_manifests_agree_and_refine_rows_add_words(tokenizer):
    """The CSV and YAML examples are the same rows; their refine row swapped a word (gray -> white) instead of
    adding one (refine: the target adds words to the source)."""
    rows = {}
    for example in ("batch_manifest.yaml", "batch_manifest.csv"):
        valid, _ = validate_manifest(read_manifest(REPO / "examples" / example), tokenizer, 50, 5.0)
        rows[example] = [(row.id, row.identity()) for row in valid]
    assert rows["batch_manifest.yaml"] == rows["batch_manifest.csv"]
    refines = [spec["edit"] for _, spec in rows["batch_manifest.csv"] if spec["edit_kind"] == "refine"]
    assert refines
    for edit in refines:
        source = edit["source_prompt"].split()
        for target in edit["target_prompts"]:
            words = iter(target.split())
            assert len(target.split()) > len(source) and all(word in words for word in source), target
