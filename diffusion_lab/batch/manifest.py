"""Batch manifests (CSV or YAML): read them, resolve every row to plain data, and check it BEFORE any work starts.

A row describes one Prompt-to-Prompt edit (diffusion_lab.editing.PromptEdit) of one image:

    id                  a name for the row and its output folder rows/<id>/ (default row-0001, row-0002, ...);
                        letters, digits, '.', '_' and '-' (other characters become '_'); no folders, no leading '.'
    image               a path to an image file (relative paths: from the manifest's folder), inverted then edited
    scene_seed          or a shapes-world scene drawn from this seed (rendered at the model's size; the "real" image
                        of the labs); scene_objects: its number of objects (default 1)
    scene               or a scene given explicitly: {background: gray, objects: [{shape, colour, size, x, y}]}
                        (none of the three: the source image is GENERATED from `seed` with the source prompt)
    source_prompt       the prompt of the source image (for a scene, its caption when left out)
    target_prompts      one or more edited prompts (CSV: separated by '|'; YAML: a list)
    edit                replace (word swap: prompts of equal token counts), refine (phrase added), reweight
                        (needs reweight), local_blend (a word swap that keeps the source outside the region of
                        blend_words); any edit may also set blend_words
    cross_replace_steps, self_replace_steps, reweight, blend_words, blend_threshold, blend_mask_style,
    self_replace_max_resolution,
    attention_control   the PromptEdit settings (see diffusion_lab.editing.PromptEdit). CSV cells hold YAML/JSON
                        for the structured ones ("[0.0, 0.8]", "{red: 2.0}"); reweight also reads "red:2; blue:0.5",
                        blend_words "circle|square"; blend_mask_style is official (the default: the
                        Prompt-to-Prompt repository's local-blend mask) or ours (the mask of rows run before it
                        was the default; attention.LocalBlend's mask_style)
    inversion           for an image or a scene: null_text (default), negative_prompt, direct, ddim or fixed_point
    inversion_options   e.g. {inner_steps: 5} (null_text_settings: fast or paper, the null-text loop, default the
                        model's; inner_steps, learning_rate, early_stop_epsilon, fixed_point_iterations,
                        fixed_point_tolerance, anderson_memory)
    seed                the seed of a generated source image (default 0)
    num_steps, guidance_scale   DDIM steps and guidance w (default: the model's, 50 and 5.0 for shapes-tiny)
    notes               free text, shown in the report, not part of the row's identity

A YAML manifest is a list of rows, or a mapping {defaults: {...}, rows: [...]} whose defaults apply to every row
(a default `inversion` applies only to rows with an image or a scene). A CSV manifest has one column per field;
empty cells are unset.

`validate_manifest` returns the valid rows (`Row`, plain JSON-ready data) and one `InvalidRow` per bad row, with
messages such as "row 4 (line 5, id 'bad-word'): the target prompt 1 'a large red banana ...': word(s) 'banana'
are not in this model's vocabulary; use only: ...". Nothing is loaded but the tokenizer.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import errno
import functools
import hashlib
import inspect
import io
import json
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOCAL_BLEND_ALIASES = {"local_blend", "local blend", "local-blend", "localblend", "blend"}


# The manifest's edit fields and inversion options are derived from the library's own dataclasses (PromptEdit,
# NullTextSettings, FixedPointSettings) and from invert's keywords, so a new setting there is a manifest field here.
# They are computed on first use (the editing and inversion modules import torch).
@functools.cache
def edit_choices() -> tuple[str, ...]:
    """PromptEdit's edit kinds, and local_blend (a word swap with blend_words)."""
    from ..editing import PROMPT_EDIT_KINDS

    return (*PROMPT_EDIT_KINDS, "local_blend")


@functools.cache
def edit_settings() -> tuple[str, ...]:
    """The PromptEdit fields a row may set besides its prompts and edit kind, in PromptEdit's order."""
    from ..editing import EDIT_SETTINGS

    return EDIT_SETTINGS


@functools.cache
def inversion_options() -> dict[str, type]:
    """{option: int or float}: the keywords of inversion.invert that set a NullTextSettings field (same name) or a
    FixedPointSettings field (its name with or without the prefix fixed_point_), typed like the field's default."""
    from ..inversion import FixedPointSettings, NullTextSettings, invert

    keywords = inspect.signature(invert).parameters
    options: dict[str, type] = {}
    for settings, prefixes in ((NullTextSettings, ("",)), (FixedPointSettings, ("fixed_point_", ""))):
        for setting in dataclasses.fields(settings):
            name = next((prefix + setting.name for prefix in prefixes if prefix + setting.name in keywords), None)
            if name is not None:
                options[name] = type(setting.default)
    return options


@functools.cache
def manifest_fields() -> tuple[str, ...]:
    """Every field (CSV column, YAML key) of a row."""
    return ("id", "image", "scene_seed", "scene_objects", "scene", "source_prompt", "target_prompts", "edit",
            *edit_settings(), "inversion", "inversion_options", "seed", "num_steps", "guidance_scale", "notes")


def __getattr__(name: str):  # the derived tables under their constant names: manifest.FIELDS, ...
    derived = {"FIELDS": manifest_fields, "EDIT_CHOICES": edit_choices, "INVERSION_OPTIONS": inversion_options}
    if name in derived:
        return derived[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

ALIASES = {"target_prompt": "target_prompts", "targets": "target_prompts", "prompt": "source_prompt",
           "image_path": "image", "path": "image", "inversion_method": "inversion", "steps": "num_steps",
           "guidance": "guidance_scale"}
MAX_ID_LENGTH = 80
MAX_SEED = 2**32 - 1  # numpy's and every torch generator's common range
# (low, high) of every numeric field, both included: a value outside fails validation with the bound in the message
# (guidance_scale 1e300 sampled all-black images, num_steps 1e9 and seed 1e23 failed only at run time).
BOUNDS = {
    "seed": (0, MAX_SEED),
    "scene_seed": (0, MAX_SEED),
    "num_steps": (1, 1000),  # DDIM steps: at most the T = 1000 training timesteps of SD and shapes-tiny
    "guidance_scale": (1.0, 30.0),  # w = 1 is no guidance; SD is used up to w ~ 15
    "blend_threshold": (0.0, 1.0),
    "self_replace_max_resolution": (1, 1024),
    "replace_steps": (0.0, 1.0),  # cross_replace_steps / self_replace_steps: fractions of the steps
    "reweight": (-10.0, 10.0),
    "inversion_options.inner_steps": (1, 100),  # null-text: 10 in the paper
    "inversion_options.learning_rate": (1e-6, 1.0),  # null-text: 1e-2 in the paper
    "inversion_options.early_stop_epsilon": (0.0, 1.0),
    "inversion_options.fixed_point_iterations": (0, 100),
    "inversion_options.fixed_point_tolerance": (0.0, 1.0),
    "inversion_options.anderson_memory": (0, 20),
}
_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing, not CSV/YAML, wrong structure, unknown columns)."""


class ManifestWarning(UserWarning):
    """Something in the manifest is ignored (a column that is not a field); the run goes on."""


class RowError(ValueError):
    """One problem of one row."""


@dataclass
class RawRow:
    """A row as read from the file: `number` counts data rows from 1; `line` is the line of the file where the row
    starts (None when unknown)."""

    number: int
    values: Any
    line: int | None = None

    def where(self, row_id: str | None = None) -> str:
        parts = [f"line {self.line}"] if self.line is not None else []
        if row_id:
            parts.append(f"id {row_id!r}")
        return f"row {self.number}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass
class Row:
    """A valid row: `spec` is plain JSON data (what a chunk file carries to the notebook), fully resolved:

    {"id", "image": {"kind": "generated"} | {"kind": "file", "path", "sha256"} | {"kind": "scene", "scene",
     "scene_seed"}, "edit": PromptEdit.to_dict(), "edit_kind", "inversion": None | {"method", "options"},
     "seed", "num_steps", "guidance_scale", "notes"}
    """

    number: int
    id: str
    spec: dict
    line: int | None = None

    def identity(self) -> dict:
        """What the row's key hashes: everything that changes its outputs (not its id, notes or the image's
        path: the image's content hash stands for the image). The local-blend mask style is left out where it
        changes nothing (no blend_words) and where it is "ours", the mask of every row before the setting existed,
        so that the keys of rows finished then stay theirs (a blended row that now takes the official default gets
        a new key: its output changes)."""
        identity = {k: v for k, v in self.spec.items() if k not in ("id", "notes")}
        image = dict(identity["image"])
        image.pop("path", None)
        identity["image"] = image
        edit = dict(identity["edit"])
        if not edit.get("blend_words") or edit.get("blend_mask_style") == "ours":
            edit.pop("blend_mask_style", None)
        identity["edit"] = edit
        return identity


@dataclass
class InvalidRow:
    number: int
    id: str | None
    errors: list[str] = field(default_factory=list)
    line: int | None = None
    values: dict | None = None

    @property
    def message(self) -> str:
        where = RawRow(self.number, None, self.line).where(self.id)
        return f"{where}: " + "; ".join(self.errors)


@dataclass
class Manifest:
    path: Path
    rows: list[RawRow]
    defaults: dict = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a .csv, .yaml/.yml (or .json) manifest into raw rows; ManifestError for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest file at {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"could not read the manifest {str(path)!r}: {error}") from None
    if suffix == ".csv":
        rows = _read_csv(text, path)
        defaults = {}
    elif suffix in (".yaml", ".yml", ".json"):
        rows, defaults = _read_yaml(text, path)
    else:
        raise ManifestError(f"a manifest is a .csv or .yaml/.yml file, got {path.name!r}")
    if not rows:
        raise ManifestError(f"the manifest {str(path)!r} has no rows")
    return Manifest(path.resolve(), rows, defaults)


def _canonical_name(name: str) -> str:
    name = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return ALIASES.get(name, name)


def _csv_records(text: str, path: Path):
    """(line, cells) for each non-blank record of a CSV text, `line` counting the file's lines from 1.

    A record must lie on one line: a quote (") left open in a cell swallowed the following lines, rows included,
    into that cell (csv reads on to the closing quote or the end of the file), so such a record fails the whole
    manifest, naming the line where the quote opens."""
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": lines end at \n only (not at \f, \x1c, ...)
    header = None
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ManifestError(f"{path.name}, line {line}: not readable as CSV ({error}); if a cell there opens a "
                                "quote (\") that is not closed on that line, close the quote or remove it") from None
        if reader.line_num > line or any("\n" in cell or "\r" in cell for cell in cells):
            raise ManifestError(_open_quote_message(path, line, reader.line_num, cells, header))
        if cells:
            header = header or cells
            yield line, cells


def _open_quote_message(path: Path, line: int, last_line: int, cells: list[str], header: list[str] | None) -> str:
    """What a record read across several lines means: a quote opened and not closed on its line."""
    index = next((i for i, cell in enumerate(cells) if "\n" in cell or "\r" in cell), max(len(cells) - 1, 0))
    column = f"column {header[index]!r}" if header and index < len(header) else f"cell {index + 1}"
    start = (cells[index].splitlines() or [""])[0] if cells else ""
    return (f"{path.name}, line {line}: the quote (\") that opens the cell \"{start[:40]}... ({column}) is not closed "
            f"on that line, so lines {line} to {last_line} were read as one cell; close the quote on line {line} or "
            "remove it (a cell cannot span lines)")


def _read_csv(text: str, path: Path) -> list[RawRow]:
    records = _csv_records(text, path)
    header = next(records, (None, []))[1]
    if not header:
        raise ManifestError(f"the CSV manifest {str(path)!r} has no header line")
    if len(header) == 1 and ";" in header[0]:
        raise ManifestError(
            f"the header of {path.name} has semicolons but no commas: {header[0][:60]!r}; a CSV manifest "
            "is separated by commas (a spreadsheet's 'CSV (comma delimited)'), or write a YAML manifest"
        )
    columns = [_canonical_name(name) for name in header]
    unknown = [name for name, canonical in zip(header, columns) if canonical not in manifest_fields()]
    typos = {name: close for name in unknown
             for close in difflib.get_close_matches(_canonical_name(name), manifest_fields(), n=1, cutoff=0.75)}
    if typos:  # a misspelt field would silently fall back to its default: refuse
        raise ManifestError("unknown column(s) in " + path.name + ": " + ", ".join(
            f"{name!r} (did you mean {close!r}?)" for name, close in typos.items()) + f"; the columns are: {', '.join(manifest_fields())}")
    if unknown:  # other columns (comments, an author, ...) are the user's own: ignored, with a warning
        warnings.warn(f"{path.name}: column(s) {unknown} are not manifest fields and are ignored "
                      f"(the fields are: {', '.join(manifest_fields())})", ManifestWarning, stacklevel=3)
    duplicated = sorted({c for c in columns if columns.count(c) > 1 and c in manifest_fields()})
    if duplicated:
        raise ManifestError(f"column(s) {duplicated} appear more than once in {path.name}")
    ignored = {name for name, canonical in zip(header, columns) if canonical not in manifest_fields()}
    rows = []
    for number, (line, cells) in enumerate(records, start=1):
        values = {}
        if len(cells) > len(header):  # more cells than columns
            values["__extra__"] = cells[len(header):]
        for name, value in zip(header, cells):
            if name in ignored:
                continue
            if value.strip() != "":
                values[_canonical_name(name)] = value.strip()
        rows.append(RawRow(number, values, line=line))
    return rows


def _read_yaml(text: str, path: Path) -> tuple[list[RawRow], dict]:
    import yaml

    try:
        data = yaml.safe_load(text)  # safe_load: plain data only, never Python objects
    except yaml.YAMLError as error:
        raise ManifestError(f"{path.name} is not valid YAML: {error}") from None
    defaults = {}
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"defaults", "rows"})
        if unknown or "rows" not in data:
            raise ManifestError(
                f"a YAML manifest is a list of rows or a mapping with 'rows' (and optional 'defaults'); "
                f"{path.name} has the keys {sorted(data)}"
            )
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ManifestError(f"'defaults' in {path.name} must be a mapping of row fields, got {type(defaults).__name__}")
        defaults = {_canonical_name(k): v for k, v in defaults.items()}
        bad = sorted(set(defaults) - set(manifest_fields()) | ({"id"} & set(defaults)))
        if bad:
            raise ManifestError(f"unknown or per-row field(s) {bad} in 'defaults' of {path.name}")
        data = data["rows"]
    if data is None:
        return [], defaults
    if not isinstance(data, list):
        raise ManifestError(f"a YAML manifest is a list of rows, got {type(data).__name__} in {path.name}")
    lines = _yaml_row_lines(text, len(data))
    return [RawRow(number, values, line) for number, (values, line) in enumerate(zip(data, lines), start=1)], defaults


def _yaml_row_lines(text: str, count: int) -> list[int | None]:
    """The line (from 1) where each of the `count` rows of a YAML manifest starts: the marks of yaml's node tree
    (a second, cheap parse); None for all when the tree does not line up with the rows."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        root = next((value for key, value in root.value if key.value == "rows"), None)
    if not isinstance(root, yaml.SequenceNode) or len(root.value) != count:
        return [None] * count
    return [node.start_mark.line + 1 for node in root.value]


# ---------------------------------------------------------------------------------------------------------
# Values (CSV gives strings, YAML gives typed values)
# ---------------------------------------------------------------------------------------------------------


def _as_text(name: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{name} must be text, got {value!r}")
    return str(value)


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise RowError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise RowError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise RowError(f"{name} must be an integer, got {value!r}")
    return value


def _as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise RowError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RowError(f"{name} must be a finite number, got {value!r}")
    return number


def number_text(value) -> str:
    """A number as a person writes it: whole numbers exactly (4294967295, not 4.29497e+09), others short (1e-06)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    if isinstance(value, int) and abs(value) < 10**16:
        return str(value)
    return f"{value:g}"  # 1e+23 as written in the manifest (not int(1e23) = 99999999999999991611392)


def _bounded(name: str, value, bound: str | None = None):
    """value when BOUNDS[bound or name] holds it, else a RowError that names the bound."""
    low, high = BOUNDS[bound or name]
    if not low <= value <= high:
        raise RowError(f"{name} must be between {number_text(low)} and {number_text(high)}, got {number_text(value)}")
    return value


def _bounded_fractions(name: str, value):
    """cross_replace_steps / self_replace_steps: a fraction, [start, end] or {word: fraction}, each in [0, 1]."""
    numbers = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, list):
            _bounded_fractions(name, number)
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise RowError(f"{name} must hold fractions between 0 and 1, got {value!r}")
        _bounded(name, number, "replace_steps")
    return value


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise RowError(f"{name} must be true or false, got {value!r}")


def _structured(name: str, value):
    """A CSV cell holding YAML/JSON (a number, a list, a mapping); typed YAML values pass through."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise RowError(f"{name} could not be read: {value!r} (write a number, [start, end] or {{word: value}})") from None


def _as_text_list(name: str, value, separators: str = "|") -> list[str]:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            value = _structured(name, stripped)
        else:
            parts = re.split("[" + re.escape(separators) + "]", stripped)
            return [part.strip() for part in parts if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value]
    raise RowError(f"{name} must be text or a list of texts, got {value!r}")


def _as_reweight(value) -> dict:
    if isinstance(value, str) and not value.strip().startswith("{"):
        scales = {}
        for part in re.split(r"[;,]", value):
            if not part.strip():
                continue
            word, sep, scale = part.replace("=", ":").partition(":")
            if not sep:
                raise RowError(f"reweight must be word:scale pairs such as 'red:2.0; blue:0.5', got {value!r}")
            scales[word.strip()] = _bounded(f"reweight[{word.strip()!r}]",
                                            _as_float(f"reweight[{word.strip()!r}]", scale.strip()), "reweight")
        return scales
    value = _structured("reweight", value)
    if not isinstance(value, dict) or not value:
        raise RowError(f"reweight must map words to scales, e.g. {{red: 2.0}}, got {value!r}")
    return {str(word): _bounded(f"reweight[{word!r}]", _as_float(f"reweight[{word!r}]", scale), "reweight")
            for word, scale in value.items()}


def _as_mapping(name: str, value) -> dict:
    value = _structured(name, value)
    if not isinstance(value, dict):
        raise RowError(f"{name} must be a mapping such as {{inner_steps: 5}}, got {value!r}")
    return value


def sanitize_id(raw) -> str:
    """A row id as a safe folder name: no folders, no leading '.', other characters replaced by '_'."""
    text = _as_text("id", raw).strip()
    if not text:
        raise RowError("id is empty")
    if "/" in text or "\\" in text or text.startswith(".") or "\0" in text:
        raise RowError(f"id {text!r} must be a plain name (no '/', '\\' or leading '.'): it names the row's output folder")
    safe = _ID_CHARACTERS.sub("_", text)[:MAX_ID_LENGTH]
    if safe.lower() in ("con", "prn", "aux", "nul"):
        safe = f"row_{safe}"
    return safe


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def validate_manifest(
    manifest: Manifest,
    tokenizer,
    default_num_steps: int,
    default_guidance_scale: float,
    allow_images_outside: bool = False,
) -> tuple[list[Row], list[InvalidRow]]:
    """Resolve and check every row; returns (valid rows, invalid rows), in manifest order. The defaults fill
    rows that do not set num_steps / guidance_scale: the model's (models.defaults.model_defaults). Image paths
    are read relative to the manifest's folder, and one that resolves outside it (`../x`, an absolute path, a
    symbolic link leading out) is an invalid row unless `allow_images_outside` (--allow-images-outside)."""
    valid: list[Row] = []
    invalid: list[InvalidRow] = []
    seen: dict[str, tuple] = {}  # lower-case id -> (row number, the id as written or None (default), the id)
    for raw in manifest.rows:
        row_id, errors, spec = None, [], None
        values = raw.values
        if not isinstance(values, dict):
            invalid.append(InvalidRow(raw.number, None, [f"a row is a mapping of fields, got {values!r}"], raw.line))
            continue
        values = {_canonical_name(k): v for k, v in values.items() if v is not None}
        written = str(values["id"]).strip() if "id" in values else None
        try:
            row_id = sanitize_id(values["id"]) if "id" in values else f"row-{raw.number:04d}"
        except RowError as error:
            errors.append(str(error))
            row_id = None
        if row_id is not None and row_id.lower() in seen:
            errors.append(_duplicate_id_message(row_id, written, seen[row_id.lower()]))
        elif row_id is not None:
            seen[row_id.lower()] = (raw.number, written, row_id)
        if not errors:
            try:
                spec = _resolve(values, manifest, tokenizer, default_num_steps, default_guidance_scale,
                                allow_images_outside)
            except RowError as error:
                errors.append(str(error))
        shown = {**(manifest.defaults if isinstance(manifest.defaults, dict) else {}), **values}  # as written
        plain_values = {k: v for k, v in shown.items() if isinstance(v, (str, int, float, bool, list, dict))}
        if errors:
            invalid.append(InvalidRow(raw.number, row_id, errors, raw.line, plain_values))
        else:
            spec = {"id": row_id, **spec}
            valid.append(Row(raw.number, row_id, spec, raw.line))
    return valid, invalid


def _duplicate_id_message(row_id: str, written: str | None, earlier: tuple[int, str | None, str]) -> str:
    """An id taken already: the same id twice, or two ids that map to the same output folder (both shown)."""
    number, earlier_written, earlier_id = earlier
    if written == earlier_written:
        return f"id {written or row_id!r} is used by row {number} already (ids name output folders)"
    this = f"id {written!r}" if written is not None else f"the default id {row_id!r}"
    other = f"id {earlier_written!r}" if earlier_written is not None else f"default id {earlier_id!r}"
    given = [text for text in (written, earlier_written) if text is not None]
    why = []
    if any(_ID_CHARACTERS.search(text) for text in given):
        why.append("characters other than letters, digits, '.', '_' and '-' become '_'")
    if row_id != earlier_id:
        why.append("letter case does not count")
    if any(len(text) > MAX_ID_LENGTH for text in given):
        why.append(f"only the first {MAX_ID_LENGTH} characters count")
    return (f"{this} and the {other} of row {number} map to the same output folder name {earlier_id!r} "
            f"({'; '.join(why or ['ids name output folders'])}); rename one of them")


def _resolve(values: dict, manifest: Manifest, tokenizer, default_num_steps, default_guidance_scale,
             allow_images_outside: bool = False) -> dict:
    if "__extra__" in values:
        raise RowError(f"more cells than columns: {values['__extra__']!r} (quote cells that contain commas)")
    unknown = sorted(set(values) - set(manifest_fields()))
    if unknown:
        raise RowError(f"unknown field(s) {unknown}; the fields are: {', '.join(manifest_fields())}")
    defaults = manifest.defaults
    merged = {**defaults, **values}

    image = _resolve_image(values, merged, manifest.base_dir, allow_images_outside)
    real = image["kind"] != "generated"

    source_prompt = merged.get("source_prompt")
    if source_prompt is None and image["kind"] == "scene":
        from ..shapes import Scene, caption

        source_prompt = caption(Scene.from_dict(image["scene"]))
    if source_prompt is None:
        raise RowError("source_prompt is missing: the text that describes the source image")
    source_prompt = _as_text("source_prompt", source_prompt).strip()
    if not source_prompt:
        raise RowError("source_prompt is empty: write the text that describes the source image")
    if "target_prompts" not in merged:
        raise RowError("target_prompts is missing: one or more edited prompts (CSV: separated by '|')")
    targets = _as_text_list("target_prompts", merged["target_prompts"])
    if not targets:
        raise RowError("target_prompts is empty: give at least one edited prompt")
    empty = [str(index) for index, target in enumerate(targets, start=1) if not target]
    if empty:
        raise RowError(f"target prompt {', '.join(empty)} is empty: write the edited prompt")

    kind = _as_text("edit", merged.get("edit", "replace")).strip().lower()
    if kind in _LOCAL_BLEND_ALIASES:
        kind = "local_blend"
    if kind not in edit_choices():
        raise RowError(f"unknown edit {kind!r}; choose one of {', '.join(edit_choices())}")
    edit = {"source_prompt": source_prompt, "target_prompts": targets,
            "edit": "replace" if kind == "local_blend" else kind}
    for name in edit_settings():
        if name not in merged:
            continue
        value = merged[name]
        if name == "reweight":
            value = _as_reweight(value)
        elif name == "blend_words":
            value = _as_text_list(name, value, separators="|, \t")
        elif name == "blend_threshold":
            value = _bounded(name, _as_float(name, value))
        elif name == "blend_mask_style":
            value = _as_mask_style(value)
        elif name == "self_replace_max_resolution":
            value = _bounded(name, _as_int(name, value))
        elif name == "attention_control":
            value = _as_bool(name, value)
        else:
            value = _structured(name, value)
            if isinstance(value, bool) or not isinstance(value, (int, float, list, dict)):
                raise RowError(f"{name} must be a fraction, [start, end] or {{word: fraction}}, got {value!r}")
            value = _bounded_fractions(name, value)
        edit[name] = value
    if kind == "local_blend" and not edit.get("blend_words"):
        raise RowError("edit local_blend needs blend_words: the words whose region may change, e.g. circle|square")
    _check_edit(edit, kind, tokenizer)
    from ..editing import PromptEdit

    edit_dict = PromptEdit.from_dict(edit).to_dict()

    inversion = None
    if real:
        method = _as_text("inversion", merged.get("inversion", "null_text")).strip().lower()
        from ..inversion import METHODS

        if method not in METHODS:
            raise RowError(f"unknown inversion {method!r}; choose one of {', '.join(METHODS)}")
        options = _as_mapping("inversion_options", merged["inversion_options"]) if "inversion_options" in merged else {}
        checked = {}
        from ..inversion import NULL_TEXT_PRESETS

        for name, value in options.items():
            label = f"inversion_options.{name}"
            if name == "null_text_settings":  # a preset by name (a NullTextSettings is not a manifest value)
                preset = _as_text(label, value).strip().lower()
                if preset not in NULL_TEXT_PRESETS:
                    raise RowError(f"{label} must be one of {', '.join(NULL_TEXT_PRESETS)} (the library's loop or "
                                   f"Mokady et al.'s), got {value!r}")
                checked[name] = preset
                continue
            if name not in inversion_options():
                raise RowError(f"unknown inversion option {name!r}; the options are null_text_settings, "
                               f"{', '.join(inversion_options())}")
            checked[name] = _bounded(label, (_as_int if inversion_options()[name] is int else _as_float)(label, value))
        inversion = {"method": method, "options": dict(sorted(checked.items()))}
    else:
        for name in ("inversion", "inversion_options"):
            if name in values and str(values[name]).strip().lower() not in ("", "none"):
                raise RowError(
                    f"{name} is set but the row has no image to invert (give image or scene_seed); without one, "
                    "the source image is generated from seed"
                )

    seed = _bounded("seed", _as_int("seed", merged.get("seed", 0)))
    num_steps = _bounded("num_steps", _as_int("num_steps", merged.get("num_steps", default_num_steps)))
    guidance = _bounded("guidance_scale", _as_float("guidance_scale", merged.get("guidance_scale", default_guidance_scale)))
    notes = _as_text("notes", merged["notes"]) if "notes" in merged else None
    spec = {"image": image, "edit": edit_dict, "edit_kind": kind, "inversion": inversion, "seed": seed,
            "num_steps": num_steps, "guidance_scale": guidance, "notes": notes}
    try:
        json.dumps(spec, allow_nan=False)  # the row travels as JSON and is hashed as JSON
    except (TypeError, ValueError) as error:
        raise RowError(f"the row's values must be plain text and finite numbers: {error}") from None
    return spec


def _as_mask_style(value) -> str:
    from ..attention import MASK_STYLES

    style = _as_text("blend_mask_style", value).strip().lower()
    if style not in MASK_STYLES:
        raise RowError(f"blend_mask_style {value!r} is not a local-blend mask; choose one of {', '.join(MASK_STYLES)} "
                       "(ours: every cross-attention layer, bilinear, dilated by one latent pixel; official: the "
                       "Prompt-to-Prompt repository's 16x16 maps, max-pooled, nearest upsampling)")
    return style


def _resolve_image(values: dict, merged: dict, base_dir: Path, allow_outside: bool = False) -> dict:
    given = [name for name in ("image", "scene_seed", "scene") if name in values]
    if len(given) > 1:
        raise RowError(f"give one of image, scene_seed or scene, not {' and '.join(given)}")
    if not given:
        given = [name for name in ("image", "scene_seed", "scene") if name in merged][:1]
    if not given:
        if "scene_objects" in values:
            raise RowError("scene_objects is set without scene_seed")
        return {"kind": "generated"}
    name = given[0]
    if name == "image":
        return _resolve_image_file(_as_text("image", merged["image"]).strip(), base_dir, allow_outside)
    from ..shapes import Scene, random_scene

    if name == "scene_seed":
        seed = _bounded("scene_seed", _as_int("scene_seed", merged["scene_seed"]))
        objects = _as_int("scene_objects", merged.get("scene_objects", 1))
        try:
            scene = random_scene(seed, num_objects=objects)
        except ValueError as error:
            raise RowError(f"scene_seed {seed} with scene_objects {objects}: {error}") from None
        return {"kind": "scene", "scene": scene.to_dict(), "scene_seed": seed}
    data = _structured("scene", merged["scene"])
    try:
        scene = Scene.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError) as error:
        raise RowError(f"scene: {error}") from None
    if scene is None:
        raise RowError(f"scene must be a mapping {{background, objects: [...]}}, got {data!r}")
    return {"kind": "scene", "scene": scene.to_dict(), "scene_seed": None}


def _resolve_image_file(text: str, base_dir: Path, allow_outside: bool = False) -> dict:
    """{"kind": "file", "path", "sha256"} of an image cell, or a RowError that says what is wrong with the path.
    The path must resolve inside `base_dir` (the manifest's folder) unless `allow_outside`."""
    if "\0" in text:
        raise RowError(f"image {text!r} contains a NUL character: write the image file's path")
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = base_dir / path
    try:
        path = path.resolve()
        _check_inside(text, path, base_dir, allow_outside)
        mode = os.stat(path).st_mode
    except RuntimeError:  # Path.resolve before Python 3.13: a symbolic link loop
        raise RowError(_image_path_error(text, path, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))) from None
    except OSError as error:
        raise RowError(_image_path_error(text, path, error)) from None
    if stat.S_ISDIR(mode):
        raise RowError(f"image {text!r} is a folder, not an image file")
    if not stat.S_ISREG(mode):  # a pipe or a device would block or never end
        raise RowError(f"image {text!r} is not a regular file (a pipe, socket or device): give an image file")
    from ..images import load_image

    try:
        sha256 = file_sha256(path)  # first: an OSError here is the file's (permission denied), not the decoder's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conversions are reported when the row runs
            load_image(path)
    except OSError as error:
        raise RowError(_image_path_error(text, path, error, unreadable=True)) from None
    except ValueError as error:
        raise RowError(f"image {text!r} is unreadable: {error}") from None
    return {"kind": "file", "path": str(path), "sha256": sha256}


def _check_inside(text: str, path: Path, base_dir: Path, allow_outside: bool) -> None:
    """RowError when the resolved image path leaves the manifest's folder (checked before the file is looked at:
    a refused path says nothing about what is there)."""
    base = base_dir.resolve()
    if allow_outside or path == base or base in path.parents:
        return
    raise RowError(f"image {text!r} resolves to {str(path)!r}, outside the manifest's folder {str(base)!r}: images "
                   "are read from the manifest's folder and below (relative paths from there); move the image there, "
                   "or pass --allow-images-outside to read images from anywhere")


def _image_path_error(text: str, path: Path, error: OSError, unreadable: bool = False) -> str:
    """The message of an OSError on an image's path: not found, name too long, permission denied, ..."""
    shown = text if len(text) <= 80 else f"{text[:40]}...{text[-20:]}"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"image file {shown!r} not found (looked at {str(path)!r})"
    if error.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
        what = (f"a part of it is {longest} bytes long, more than a file name may have (255 on most file systems)"
                if longest > 255 else f"the path is {len(os.fsencode(str(path)))} bytes long, more than the system allows")
        return f"image file name {shown!r} is too long: {what}; check the cell, or rename the file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return (f"image {shown!r} cannot be read: permission denied (at {str(path)!r}); make the file and its folders "
                "readable by this user")
    if error.errno == errno.ELOOP:
        return f"image {shown!r} is a symbolic link that leads to itself (at {str(path)!r})"
    if unreadable:
        return f"image {shown!r} is unreadable: {error}"
    return f"image {shown!r} cannot be opened: {error.strerror or error} (at {str(path)!r})"


def _check_edit(edit: dict, kind: str, tokenizer) -> None:
    from ..editing import EditError, PromptEdit

    try:
        PromptEdit.from_dict(edit).check(tokenizer)
    except EditError as error:
        message = str(error)
        if kind == "local_blend" and "AttentionRefine" in message:
            message += " For a local blend of prompts of different lengths: edit refine with blend_words."
        raise RowError(message) from None
    except (ValueError, TypeError) as error:
        raise RowError(f"the edit settings are not valid: {error}") from None


def row_key(row: Row | dict, model_fingerprint: str) -> str:
    """sha256 of the canonical JSON of the row's identity and the model's fingerprint: the key under which a
    finished row is recognised on a rerun."""
    identity = row.identity() if isinstance(row, Row) else row
    canonical = json.dumps({"format": 1, "row": identity, "model": model_fingerprint}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
