"""What the batch notebook (edit_chunk.ipynb) runs inside its kernel: one chunk of manifest rows, one model load.

    summary = process_chunk(CHUNK_FILE, OUT_DIR, MODEL)

The chunk file is plain JSON written by the runner: {"name", "run", "model", "rows": [Row.spec + "key"],
"threads", "notebook"}. For each row, in order:

  * claimed first (rows/<id>/.claim, claims.py): a row that a live process (of another run) is editing is not
    started ("claimed"); then its status is re-read, and it is skipped when it already says "ok" with the row's
    key (done by an earlier run, or meanwhile by another process): a done row is never redone or overwritten;
  * otherwise run with diffusion_lab.editing (run_edit; for an image or a scene, inversion.invert first),
    its outputs written atomically into rows/<id>/:
        input.png (image and scene rows)   source.png (source, or the reconstruction of the input)
        edit-1.png, edit-2.png, ...        attention.png (edit_attention_figure)   comparison.png (result.figure)
        metrics.json                       status.json (written LAST: the row is done when it exists with "ok")
  * an exception is recorded in status.json ("failed", the error and its traceback) and the next row runs.

Everything here is plain data in and files out: nothing is unpickled, weights are loaded only by
models.load_pipeline (safetensors), and every path is checked to stay inside OUT_DIR.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
import traceback
import warnings
from pathlib import Path

from .claims import RowClaim, RowClaimed
from .files import atomic_write_json, atomic_write_png, inside, read_json

STATUS_FILE = "status.json"
SUSPECT_DB = 10.0  # a reconstruction (or an edit's kept region) this many dB below the input's own VAE round trip is
#                    flagged: "warning" in the report (10 dB: ten times the squared error the VAE alone makes)
SUSPECT_EDIT_DB = 15.0  # the same for an edit's background: a generated edit redraws it (the example manifest's
#                         edits sit 4.8 and 8.5 dB below the round trip there)
VAE_FLOOR_DB = 20.0  # an input whose own VAE round trip is below this is flagged too: the model cannot represent it
METRICS_FILE = "metrics.json"
ROWS_DIR = "rows"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def row_dir(out_dir, row_id: str) -> Path:
    return inside(out_dir, ROWS_DIR, row_id)


def row_status(out_dir, row_id: str) -> dict | None:
    return read_json(row_dir(out_dir, row_id) / STATUS_FILE)


def is_done(out_dir, row_id: str, key: str, status: dict | None = None) -> bool:
    """True when the row's status says ok for this key and every file it lists is still there."""
    status = row_status(out_dir, row_id) if status is None else status
    if not status or status.get("status") != "ok" or status.get("key") != key:
        return False
    folder = row_dir(out_dir, row_id)
    return all((folder / name).is_file() for name in status.get("files", []))


class DriverGone(RuntimeError):
    """The process that started this kernel has died (the batch run was killed): stop before the next row."""


def process_chunk(chunk_file, out_dir, model: str | None = None, verbose: bool = True) -> dict:
    """Run every row of a chunk file (see the module docstring); returns the chunk's summary (also written to
    chunks/<name>.result.json): per-row status and the time spent importing, loading the model and editing."""
    started = time.perf_counter()
    parent = os.getppid()
    os.environ["DIFFUSION_LAB_NO_PROGRESS"] = "1"  # no progress bars in the executed notebook (the log)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    out = Path(out_dir).resolve()
    chunk = json.loads(Path(chunk_file).read_text(encoding="utf-8"))
    from .lifeline import this_process, watch_kernel

    watch_kernel(chunk.get("driver"))  # first (the imports take seconds): exit once the driver or the parent is gone
    model = model or chunk.get("model") or "shapes-tiny"
    context = {"run": chunk.get("run"), "chunk": chunk.get("name"), "notebook": chunk.get("notebook")}
    summary = {"name": chunk.get("name"), "run": chunk.get("run"), "model": model, "pid": os.getpid(), "rows": {},
               "import_seconds": 0.0, "load_seconds": 0.0, "row_seconds": 0.0, "error": None}
    try:
        kernel_started = _process_start_time()
        summary["kernel_age_seconds"] = None if kernel_started is None else max(0.0, time.time() - kernel_started)
    except Exception:  # pragma: no cover - informational only
        summary["kernel_age_seconds"] = None

    tick = time.perf_counter()
    import torch  # noqa: F401  (the heavy imports, timed on their own)

    from ..editing import run_edit  # noqa: F401
    from ..models import load_pipeline

    summary["import_seconds"] = time.perf_counter() - tick
    if chunk.get("threads"):
        torch.set_num_threads(int(chunk["threads"]))

    owner = {"run": chunk.get("run"), "chunk": chunk.get("name"), **this_process()}
    pipe, load_error, loaded = None, None, False
    for row in chunk["rows"]:  # each row decided when it starts, not once for the chunk
        if os.getppid() != parent:
            raise DriverGone("the batch run that started this kernel is gone; stopping before the next row")
        try:
            claim = RowClaim(row_dir(out, row["id"]), {**owner, "claimed": now()}).acquire()
        except RowClaimed as held:  # a live process (of another run) edits it: never twice at once
            summary["rows"][row["id"]] = "claimed"
            if verbose:
                print(f"{row['id']}: not started: {held}", flush=True)
            continue
        try:
            if is_done(out, row["id"], row["key"]):  # done meanwhile (by an earlier run's process): never redone
                summary["rows"][row["id"]] = "skipped"
                continue
            if not loaded:
                tick = time.perf_counter()
                try:
                    pipe = load_pipeline(model)
                except Exception as error:  # every row of the chunk fails with it, recorded
                    load_error = error
                summary["load_seconds"] = time.perf_counter() - tick
                loaded = True
            if load_error is not None:
                status = failed_status(row, load_error, context,
                                       message=f"could not load the model {model!r}: {load_error}")
                atomic_write_json(row_dir(out, row["id"]) / STATUS_FILE, status)
            else:
                status = run_row(pipe, row, out, model, context, parent)
        finally:
            claim.release()
        summary["rows"][row["id"]] = status["status"]
        summary["row_seconds"] += status.get("seconds", 0.0)
        if verbose:
            line = f"{row['id']}: {status['status']} in {status.get('seconds', 0.0):.1f} s"
            print(line + (f"  ({status['error']})" if status.get("error") else ""), flush=True)
    summary["seconds"] = time.perf_counter() - started
    if chunk.get("result_file"):
        atomic_write_json(inside(out, chunk["result_file"]), summary)
    return summary


def _process_start_time() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return None


def failed_status(row: dict, error: BaseException | str, context: dict, message: str | None = None,
                  seconds: float = 0.0) -> dict:
    if isinstance(error, BaseException):
        error_type = type(error).__name__
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        text = message or f"{error_type}: {error}"
    else:
        error_type, trace, text = "Error", "", message or str(error)
    return {"id": row["id"], "key": row["key"], "status": "failed", "error": text, "error_type": error_type,
            "traceback": trace, "seconds": seconds, "finished": now(), "files": [], "warnings": [], **context}


def run_row(pipe, row: dict, out_dir, model: str, context: dict, parent_pid: int | None = None) -> dict:
    """Run one row and write its files; returns (and writes) its status. Never raises for a failing row."""
    folder = row_dir(out_dir, row["id"])
    folder.mkdir(parents=True, exist_ok=True)
    status_path = folder / STATUS_FILE
    previous = read_json(status_path) or {}
    if status_path.exists():
        status_path.unlink()  # the row is not done while its files are being replaced
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pictures, metrics = edit_row(pipe, row, model)
        check_outputs(pictures, metrics)
        messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        seconds = time.perf_counter() - started
        metrics["seconds"] = {**metrics.get("seconds", {}), "total": seconds}
        if parent_pid is not None and os.getppid() != parent_pid:
            raise DriverGone("the batch run that started this kernel is gone; this row's results are discarded")
        for name, picture in pictures.items():
            atomic_write_png(folder / name, picture)
        atomic_write_json(folder / METRICS_FILE, metrics)
        files = [*pictures, METRICS_FILE]
        for stale in set(previous.get("files", [])) - set(files):
            try:
                inside(folder, stale).unlink()
            except (OSError, ValueError):
                pass
        status = {"id": row["id"], "key": row["key"], "status": "ok", "error": None, "seconds": seconds,
                  "finished": now(), "files": files, "warnings": messages, "suspect": suspect_results(metrics),
                  **context}
    except DriverGone:
        raise
    except Exception as error:  # recorded; the next row runs
        status = failed_status(row, error, context, seconds=time.perf_counter() - started)
    atomic_write_json(status_path, status)
    return status


class GarbageOutputError(ValueError):
    """A row's images or metrics are not a result (NaN, a constant image, an infinite metric): the row fails."""


IMAGE_FILES = ("source.png",)  # and edit-N.png: the sampled images (not the input, not the figures)


def check_outputs(pictures: dict, metrics: dict) -> None:
    """Raise GarbageOutputError when an image holds NaN or is one constant colour, or a metric is not a finite
    number: guidance_scale 1e300 sampled all-black images that were marked "ok" with psnr_to_source Infinity."""
    import numpy as np

    for name, picture in pictures.items():
        if name not in IMAGE_FILES and not name.startswith("edit-"):
            continue
        array = np.asarray(picture, dtype=np.float64)
        if not np.isfinite(array).all():
            raise GarbageOutputError(f"{name} holds NaN or infinite values: the sampling diverged "
                                     "(lower guidance_scale or check the model)")
        if array.size and float(array.max() - array.min()) == 0.0:
            colour = tuple(int(v) for v in array.reshape(-1, array.shape[-1] if array.ndim == 3 else 1)[0])
            raise GarbageOutputError(f"{name} is one constant colour {colour}: not an image (the sampling diverged "
                                     "or the model outputs nothing; lower guidance_scale or check the model)")

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")
        elif isinstance(value, float) and not math.isfinite(value):
            hint = " (the images are identical)" if "psnr" in where and value > 0 else ""
            raise GarbageOutputError(f"the metric {where} is {value}{hint}: not a finite number")

    walk(metrics, "")


def edit_row(pipe, row: dict, model: str) -> tuple[dict, dict]:
    """The edit of one row with diffusion_lab.editing: ({file name: picture}, metrics)."""
    import numpy as np
    from PIL import Image

    from ..attention.figures import edit_attention_figure
    from ..editing import PromptEdit, run_edit
    from ..images import load_image
    from ..inversion import cached_invert
    from ..latents import image_size
    from ..models.defaults import inversion_guidance_for_edit

    edit = PromptEdit.from_dict(row["edit"])
    image = row["image"]
    guidance = float(row["guidance_scale"])
    input_image, masks, timing = None, None, {}
    size = image_size(pipe)
    if image["kind"] == "file":
        input_image = load_image(image["path"], size)
    elif image["kind"] == "scene":
        from ..shapes import Scene, render

        rendered = render(Scene.from_dict(image["scene"]), size)
        input_image, masks = Image.fromarray(rendered.image), rendered.masks
    if input_image is None:
        tick = time.perf_counter()
        result = run_edit(pipe, edit, seed=int(row["seed"]), num_steps=int(row["num_steps"]), guidance_scale=guidance,
                          progress=False)
        timing["edit"] = time.perf_counter() - tick
    else:
        method = row["inversion"]["method"]
        tick = time.perf_counter()
        # rows that share an image, source prompt and inversion settings invert it once per worker (and their
        # edits then replay the same recorded source branch: editing.run_edit's source cache)
        inversion = cached_invert(
            pipe, input_image, edit.source_prompt, method=method, num_steps=int(row["num_steps"]),
            guidance_scale=inversion_guidance_for_edit(method, guidance), progress=False, **row["inversion"]["options"],
        )
        timing["inversion"] = time.perf_counter() - tick
        tick = time.perf_counter()
        result = run_edit(pipe, edit, inversion=inversion, guidance_scale=guidance, progress=False)
        timing["edit"] = time.perf_counter() - tick

    pictures = {}
    if input_image is not None:
        pictures["input.png"] = input_image
    pictures["source.png"] = result.source_image
    for index, edited in enumerate(result.edited_images, start=1):
        pictures[f"edit-{index}.png"] = edited
    pictures["attention.png"] = edit_attention_figure(result, pipe.tokenizer)
    pictures["comparison.png"] = result.figure(input_image=None if input_image is None else np.array(input_image))
    metrics = edit_metrics(result, input_image, masks)
    if input_image is not None:
        metrics["vae_round_trip"] = vae_round_trip_metrics(pipe, input_image, masks)
    metrics.update({"id": row["id"], "key": row["key"], "model": model, "edit": row["edit"],
                    "edit_kind": row.get("edit_kind"), "inversion": row.get("inversion"), "seed": row.get("seed"),
                    "num_steps": row["num_steps"], "guidance_scale": guidance, "seconds": timing})
    return pictures, metrics


def edit_metrics(result, input_image=None, masks=None) -> dict:
    """Per target: PSNR / SSIM to the source (how much changed), the background PSNR to the input for a scene
    (outside its objects: what should not change), and the shapes analyzer's scores for a shapes caption
    (target_matched, layout_kept). For an input image: the reconstruction's PSNR / SSIM."""
    import numpy as np

    from ..metrics import background_psnr, psnr, ssim

    def number(value) -> float:
        return round(float(value), 4)

    metrics: dict = {"targets": []}
    if input_image is not None:
        reference = np.array(input_image)  # a writable copy (torch warns about read-only arrays)
        metrics["reconstruction"] = {"psnr": number(psnr(result.source_image, reference)),
                                     "ssim": number(ssim(result.source_image, reference))}
    for prompt, edited in zip(result.target_prompts, result.edited_images):
        entry = {"prompt": prompt, "psnr_to_source": number(psnr(edited, result.source_image)),
                 "ssim_to_source": number(ssim(edited, result.source_image))}
        if masks is not None:
            entry["background_psnr_to_input"] = number(background_psnr(edited, np.array(input_image), masks))
        entry.update(_analyzer_scores(result.source_image, edited, prompt))
        metrics["targets"].append(entry)
    return metrics


def vae_round_trip_metrics(pipe, input_image, masks=None) -> dict:
    """The input's own ceiling: PSNR of decode(encode(input)) to the input (and outside a scene's objects), what
    no latent-space inversion or edit can beat (lecture: the VAE round trip)."""
    import numpy as np

    from ..latents import vae_round_trip
    from ..metrics import background_psnr, psnr

    reference = np.array(input_image)  # (H, W, 3) uint8
    round_trip = vae_round_trip(pipe, input_image)[0]  # (H, W, 3) uint8
    ceiling = {"psnr": round(float(psnr(round_trip, reference)), 4)}
    if masks is not None:
        ceiling["background_psnr"] = round(float(background_psnr(round_trip, reference, masks)), 4)
    return ceiling


def suspect_results(metrics: dict, threshold_db: float = SUSPECT_DB, edit_threshold_db: float = SUSPECT_EDIT_DB,
                    floor_db: float = VAE_FLOOR_DB) -> list[str]:
    """Why a row's result is suspect (empty when it is not): its reconstruction more than `threshold_db`, or an
    edit's background (outside a scene's objects, what should not change) more than `edit_threshold_db`, below the
    input's own VAE round trip; or
    that round trip itself below `floor_db` (the model's VAE cannot represent the input: a 16-bit RGBA image whose
    half-transparent half was composited on white came back at 12.98 dB, as did its reconstruction, with the red
    circle turned green). The row stays done (its files are a result) and is shown as "warning" with the numbers."""
    ceiling = metrics.get("vae_round_trip") or {}
    found = []
    reconstruction = (metrics.get("reconstruction") or {}).get("psnr")
    if "psnr" in ceiling and ceiling["psnr"] < floor_db:
        found.append(f"suspect: the input's own VAE round trip is {ceiling['psnr']:.2f} dB (flagged below {floor_db:g} "
                     f"dB): this model's VAE cannot represent the image, so the reconstruction "
                     f"({reconstruction:.2f} dB) and the edits cannot be faithful (a transparent or 16-bit input "
                     "composited on white, or an image unlike the model's training images?)")
    if reconstruction is not None and "psnr" in ceiling and reconstruction < ceiling["psnr"] - threshold_db:
        found.append(f"suspect: the reconstruction is {reconstruction:.2f} dB, {ceiling['psnr'] - reconstruction:.1f} "
                     f"dB below the input's own VAE round trip ({ceiling['psnr']:.2f} dB; flagged at {threshold_db:g} "
                     "dB below): the inversion did not find this image (check the input, e.g. a transparent or "
                     "16-bit image composited on white, the source prompt and the inversion method)")
    for index, target in enumerate(metrics.get("targets", []), start=1):
        kept = target.get("background_psnr_to_input")
        if kept is not None and "background_psnr" in ceiling and kept < ceiling["background_psnr"] - edit_threshold_db:
            found.append(f"suspect: edit {index} keeps the background (outside the objects) at {kept:.2f} dB, "
                         f"{ceiling['background_psnr'] - kept:.1f} dB below the input's own VAE round trip there "
                         f"({ceiling['background_psnr']:.2f} dB; flagged at {edit_threshold_db:g} dB below)")
    return found


def _analyzer_scores(source, edited, prompt: str) -> dict:
    from ..shapes import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:  # not a shapes-world caption: nothing the analyzer can check
        return {}
    from ..shapes.scoring import score_edit

    score = score_edit(source, edited, prompt)
    return {name: round(float(score[name]), 4) for name in ("target_matched", "layout_kept")}


def chunk_table(summary: dict) -> str:
    """A few lines for the executed notebook: where the time went and what happened to each row."""
    lines = [f"chunk {summary.get('name')}: imports {summary['import_seconds']:.1f} s, model load "
             f"{summary['load_seconds']:.1f} s, rows {summary['row_seconds']:.1f} s"]
    lines += [f"  {row_id}: {state}" for row_id, state in summary["rows"].items()]
    return "\n".join(lines)
