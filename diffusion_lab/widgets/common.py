"""What every lab panel shares: cached pipelines and results, model defaults, pictures, progress, saving.

Panels (one module per lab) only call the diffusion_lab API; this module holds the plumbing:

    pipe = get_pipeline("shapes-tiny")              # loaded once per kernel (load_pipeline caches too)
    settings = model_defaults("shapes-tiny")        # image size, guidance, steps (diffusion_lab.models.defaults)
    image, prompt = source_scene(pipe, seed=3)      # a "real" image: a rendered shapes scene and its caption
    view = ImageView(); view.show(image)            # an ipywidgets.Image fed with PNG bytes
    save_outputs(out_dir, {"edits": figure}, {"psnr": 31.2})   # PNGs + metrics.json (headless runs)

Everything a widget shows is a picture (PIL image or matplotlib figure); numbers are rounded with
`rounded` before they are printed so stored notebook outputs agree across CPUs.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffusion_lab.checkout import default_outputs_dir
from diffusion_lab.inversion.cache import InversionCache, cached_invert
from diffusion_lab.models.defaults import SHAPES_TINY as BUILTIN
from diffusion_lab.models.defaults import model_defaults  # noqa: F401  (the labs' common.model_defaults)

OUT_ENV = "DIFFUSION_LAB_OUT"

_PIPELINES: dict[tuple, Any] = {}


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def is_builtin(model: str) -> bool:
    return str(model) == BUILTIN


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: `threads`, or half the cores (at most 4) when None (why: README, "Speed on a
    CPU")."""
    import torch

    threads = int(threads) if threads else max(1, min(4, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(threads)
    return threads


def get_pipeline(model: str = BUILTIN, device: str | None = None, dtype: str | None = None):
    """The pipeline of `model`, loaded once per kernel and per (model, device, dtype).

    Before the built-in model's weights exist (a fresh training run), falls back to its untrained architecture
    with a warning, so the labs still run end to end (their pictures are then noise).
    """
    from diffusion_lab.models import ModelNotFoundError, load_pipeline

    defaults = model_defaults(model)
    device = device or defaults["device"]
    dtype = dtype or defaults["dtype"]
    key = (str(model), device, dtype)
    if key in _PIPELINES:
        return _PIPELINES[key]
    try:
        pipe = load_pipeline(model, device=device, dtype=dtype)
    except ModelNotFoundError:
        if not is_builtin(model):
            raise
        from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

        warnings.warn(
            "shapes-tiny's weights are missing: using its UNTRAINED architecture (pictures will be noise). "
            "Train them with `python pipelines/train_shapes_tiny.py --export-dir diffusion_lab/models/shapes-tiny`.",
            UserWarning,
            stacklevel=2,
        )
        pipe = build_untrained_pipeline().to(device)
        for module in (pipe.vae, pipe.unet, pipe.text_encoder):
            module.eval().requires_grad_(False)
    _PIPELINES[key] = pipe
    return pipe


# ----------------------------------------------------------------------------------------------------------
# Source images: the shapes world stands in for "a real image"
# ----------------------------------------------------------------------------------------------------------


def source_scene(pipe, seed: int = 0, num_objects: int = 1, background: str | None = None, objects=None):
    """(PIL image at the pipeline's image size, its caption, the Scene): a rendered scene is the lab's real image.

    The caption names every attribute but not the position (the captions shapes-tiny was trained on)."""
    from diffusion_lab.latents import image_size
    from diffusion_lab.shapes import caption, random_scene, render_image

    scene = random_scene(seed, num_objects=None if objects else num_objects, background=background, objects=objects)
    return render_image(scene, image_size(pipe)), caption(scene), scene


def load_source_image(pipe, path: str | os.PathLike):
    """A user's image file at the pipeline's size (converted with a warning)."""
    from diffusion_lab.images import load_image
    from diffusion_lab.latents import image_size

    return load_image(path, image_size(pipe))


# ----------------------------------------------------------------------------------------------------------
# Caches: a second edit of the same image must not recompute its inversion
# ----------------------------------------------------------------------------------------------------------


INVERSIONS = InversionCache(max_items=24)  # the panels' inversions (inversion.cache: keyed by weights, pixels, settings)


def cached_inversion(pipe, image, prompt, method: str, num_steps: int, guidance_scale: float,
                     progress: bool = False, **options):
    """inversion.invert(...) computed once per (weights, image, prompt, method, S, w, options): inversion.cached_invert
    with the panels' cache."""
    return cached_invert(pipe, image, prompt if isinstance(prompt, str) else list(prompt), method=method,
                         num_steps=int(num_steps), guidance_scale=float(guidance_scale), cache=INVERSIONS,
                         progress=progress, **options)


# ----------------------------------------------------------------------------------------------------------
# Pictures and numbers
# ----------------------------------------------------------------------------------------------------------


def to_pil(picture) -> Image.Image:
    """PIL image / uint8 array / [-1, 1] tensor / matplotlib figure -> PIL image."""
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    if hasattr(picture, "savefig"):
        buffer = io.BytesIO()
        picture.savefig(buffer, format="png", dpi=100)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    from diffusion_lab.viz import to_uint8_image

    return Image.fromarray(to_uint8_image(picture))


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    to_pil(picture).save(buffer, format="png")
    return buffer.getvalue()


def enlarge(picture, min_side: int = 192) -> Image.Image:
    """Scale a small picture up by an integer factor (nearest neighbour) so 64 px images are visible."""
    image = to_pil(picture)
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def rounded(value, digits: int = 3):
    """Round every float in a (nested) structure: stored outputs then agree across CPUs."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if not math.isfinite(value) else round(value, digits)
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return rounded(value.item(), digits)
    return value


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 3) -> str:
    """A markdown table of dict rows (floats rounded), for printing results and metrics.md."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(value):
        value = rounded(value, digits)
        return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def show(*pictures, min_side: int = 128) -> None:
    """Display pictures (PIL images, arrays, matplotlib figures) in a notebook; small ones are enlarged."""
    from IPython.display import display

    for picture in pictures:
        display(enlarge(picture, min_side))


def show_table(markdown: str) -> None:
    """Display a markdown table (rendered in JupyterLab, plain text elsewhere)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown))


def image_row(images, labels=None, columns: int | None = None, scale: int = 2) -> Image.Image:
    """Images side by side (wrapped after `columns`), labelled: diffusion_lab.viz.image_grid."""
    from diffusion_lab.viz import image_grid

    images = list(images)
    return image_grid(images, columns=columns or len(images), labels=labels, scale=scale)


# ----------------------------------------------------------------------------------------------------------
# Output folders (headless runs)
# ----------------------------------------------------------------------------------------------------------


def lab_out_dir(out_dir: str | os.PathLike | None, lab_name: str) -> Path:
    """OUT_DIR of a lab: the parameter if given, else $DIFFUSION_LAB_OUT/<lab>, else <repo>/outputs/labs/<lab> in a
    clone, or outputs/labs/<lab> in the current folder when the package is installed (checkout.default_outputs_dir)."""
    if out_dir:
        path = Path(out_dir)
    else:
        path = Path(os.environ.get(OUT_ENV, default_outputs_dir() / "labs")) / lab_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_outputs(out_dir: str | os.PathLike, figures: dict | None = None, metrics: dict | None = None) -> None:
    """Write each figure as <name>.png and merge `metrics` into metrics.json (floats rounded to 4 digits).

    Returns nothing on purpose: as the last line of a notebook cell it must not print machine-specific paths
    (nbval compares the stored outputs on other machines)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in (figures or {}).items():
        to_pil(picture).save(out / f"{name}.png")
    if metrics is not None:
        path = out / "metrics.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(rounded(metrics, 4))
        path.write_text(json.dumps(merged, indent=1, default=str) + "\n")


def reset_metrics(out_dir: str | os.PathLike) -> None:
    """Start a fresh metrics.json (the first cell of a run that writes one)."""
    path = Path(out_dir) / "metrics.json"
    if path.exists():
        path.unlink()


# ----------------------------------------------------------------------------------------------------------
# Widgets
# ----------------------------------------------------------------------------------------------------------


class ImageView:
    """An ipywidgets.Image that shows pictures (PIL, arrays, figures) as PNG; keeps the last one for tests.
    Hidden while it has no picture (an empty Image is a broken-image icon in JupyterLab)."""

    def __init__(self, min_side: int = 192, description: str = ""):
        import ipywidgets as widgets

        self.min_side = min_side
        self.description = description
        self.image = widgets.Image(format="png", layout=widgets.Layout(display="none"))
        self.caption = widgets.HTML(value="")
        self.widget = widgets.VBox([self.image, self.caption])
        self.picture: Image.Image | None = None
        self.updates = 0

    def show(self, picture, caption: str | None = None) -> None:
        self.picture = enlarge(picture, self.min_side)
        self.image.value = png_bytes(self.picture)
        self.image.layout.display = None
        if caption is not None:
            self.caption.value = caption
        elif self.description:
            self.caption.value = f"<i>{self.description}</i>"
        self.updates += 1

    def clear(self) -> None:
        """No picture (hidden): a failed run must not leave the previous run's pictures under its error."""
        self.picture = None
        self.image.value = b""
        self.image.layout.display = "none"
        self.caption.value = ""


class Progress:
    """An IntProgress bar plus a status line; `step_callback` fits sampling.sample's callback signature."""

    def __init__(self):
        import ipywidgets as widgets

        self.bar = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="320px"))
        self.status = widgets.HTML(value="")
        self.widget = widgets.HBox([self.bar, self.status])
        self._start = time.perf_counter()

    def reset(self, message: str = "running") -> None:
        """A fresh bar, status and timer (each run starts here, so `done` never counts an earlier run's time)."""
        self.bar.max, self.bar.value, self.bar.bar_style = 1, 0, ""
        self.status.value = message + " ..."
        self._start = time.perf_counter()

    def start(self, total: int, message: str = "running") -> None:
        self.bar.max = max(1, int(total))
        self.bar.value = 0
        self.bar.bar_style = "info"
        self.status.value = message + " ..."
        self._start = time.perf_counter()

    def advance(self, steps: int = 1) -> None:
        self.bar.value = min(self.bar.max, self.bar.value + steps)

    def step_callback(self, step_index, t=None, x_t=None, x0_hat=None) -> None:
        self.advance()

    def done(self, message: str = "done") -> None:
        self.bar.value = self.bar.max
        self.bar.bar_style = "success"
        self.status.value = f"{message} ({time.perf_counter() - self._start:.1f} s)"

    def fail(self, error: BaseException) -> None:
        """Red bar and ONE line: the error's type and the first line of its message (the rest is in the log)."""
        import html

        self.bar.bar_style = "danger"
        self.status.value = f"<span style='color:#b00'>failed: {html.escape(one_line(error))}</span>"


def one_line(error: BaseException, limit: int = 300) -> str:
    """'TypeName: first line of the message', cut to `limit` characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def label_fully(root) -> None:
    """Give every control under `root` (an ipywidgets container) room for its whole description: the default
    width cut "source prompt" to "source pr..."."""
    stack = [root]
    while stack:
        widget = stack.pop()
        stack.extend(getattr(widget, "children", ()) or ())
        style = getattr(widget, "style", None)
        if getattr(widget, "description", "") and style is not None and hasattr(style, "description_width"):
            style.description_width = "initial"


def slider(description: str, value, low, high, step, integer: bool = False, **kwargs):
    """A slider that only reports on release (continuous_update=False): no recomputation while dragging."""
    import ipywidgets as widgets

    cls = widgets.IntSlider if integer else widgets.FloatSlider
    style = {"description_width": "initial"}
    return cls(value=value, min=low, max=high, step=step, description=description, continuous_update=False,
               style=style, **kwargs)


def run_button(description: str = "Run", tooltip: str = "") -> Any:
    import ipywidgets as widgets

    return widgets.Button(description=description, button_style="primary", icon="play", tooltip=tooltip)


class Panel:
    """Base of the lab panels: `widget` (what a notebook displays), `run()` (what the Run button does),
    a Progress line and an error line. Subclasses build controls and implement `compute()`."""

    title = ""

    def __init__(self):
        import ipywidgets as widgets

        self.progress = Progress()
        self.button = run_button()
        self.button.on_click(lambda _button: self.run())
        self.log = widgets.Output()  # tqdm bars of library calls land here
        self.error: BaseException | None = None
        self.runs = 0
        self.last_seconds = 0.0

    @property
    def widget(self):
        return self._widget

    @widget.setter
    def widget(self, root) -> None:  # subclasses assign their layout: every label shown whole
        label_fully(root)
        self._widget = root

    def compute(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def views(self) -> list[ImageView]:
        return [value for value in vars(self).values() if isinstance(value, ImageView)]

    def run(self) -> None:
        """Run `compute()` with progress and errors shown in the panel (never raised into the event loop).

        A failure is a red bar with a one-line message (the full message in the log below), the pictures of the
        previous run are cleared, and the timer and the log start afresh on every run. The exception is caught
        INSIDE `with self.log:`: in IPython the Output widget's __exit__ prints and swallows any exception that
        leaves the block, so catching outside it marked failed runs green "done"."""
        self.error = None
        start = time.perf_counter()
        if self.runs == 0:  # pictures shown before any run are the panel's input: a failed run keeps them
            self._input_views = [view for view in self.views() if view.picture is not None]
        self.button.disabled = True
        self.progress.reset()
        self.log.clear_output()
        try:
            with self.log:
                try:
                    self.compute()
                except Exception as error:  # shown in the panel: a lecturer's typo must not kill the widget
                    self.error = error
                    if "\n" in str(error).strip():
                        print(f"{type(error).__name__}: {error}")
            if self.error is None:
                self.progress.done()
            else:
                for view in self.views():
                    if not any(view is kept for kept in getattr(self, "_input_views", [])):
                        view.clear()
                self.progress.fail(self.error)
        finally:
            self.button.disabled = False
            self.runs += 1
            self.last_seconds = time.perf_counter() - start

    def _ipython_display_(self):  # display(panel) shows its widget
        from IPython.display import display

        display(self.widget)
