"""Lab 4's Prompt-to-Prompt panel, timed in a real Jupyter kernel: how long a lecturer waits after pressing Run.

    python pipelines/bench_panel.py [--rounds 3] [--threads 1] [--no-compare] [--model M] [--steps S] [--json out.json]

Starts one IPython kernel (jupyter_client; it exits with this process: ipykernel polls its parent), builds the
panel exactly as labs/04_prompt_to_prompt.ipynb does, with that notebook's parameters (read by papermill), and
presses its Run button (`Button.click()`, the handler a browser click runs) in a sequence a live demo follows.
Per round, interleaved:

    plain sample                 one guided sample of the source prompt (text_to_image): the yardstick
    generated, new source        a seed not seen before: the source branch is computed and recorded
    generated, another word      the same seed, another target word: the recorded source is replayed
    real image, another word     the lab's real image, another target word: inversion and source replayed
and once, before the rounds: "real image, first edit" (the inversion is computed).

Each click is timed inside the kernel (the panel's own timer, and the kernel's CPU time) and from here (the
execute request's round trip: what the lecturer waits for, messages included). The panel's "also without P2P"
comparison is on, as in the lab (each click then also runs the edit without control); `--no-compare` turns it off.
Prints a table of medians and the ratios to a plain sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "labs" / "04_prompt_to_prompt.ipynb"
COLOURS = ("red", "green", "yellow", "cyan", "magenta", "white")

SETUP = """
import json, time
from diffusion_lab.attention import default_source_cache
from diffusion_lab.generation import text_to_image
from diffusion_lab.shapes import parse_caption
from diffusion_lab.widgets import common, prompt_to_prompt as lab
P = json.loads({parameters!r})
common.configure_threads({threads})
pipe = common.get_pipeline(P["MODEL"], device=P["DEVICE"])
defaults = common.model_defaults(P["MODEL"])
STEPS, GUIDANCE = int(P["STEPS"] or defaults["num_steps"]), float(P["GUIDANCE"] or defaults["guidance_scale"])
wanted = parse_caption(P["SOURCE_PROMPT"])
objects = [{{k: getattr(o, k) for k in ("shape", "colour", "size") if getattr(o, k)}} for o in wanted.objects]
real_image, real_prompt, _ = common.source_scene(pipe, P["REAL_SCENE_SEED"], objects=objects,
                                                 background=wanted.background)
def make_panel(image, prompt):
    made = lab.PromptToPromptPanel(pipe, image, prompt, P["SOURCE_PROMPT"],
                                   P["SOURCE_PROMPT"].replace(*P["SHAPE_SWAP"]), seed=P["SEED"], num_steps=STEPS,
                                   guidance_scale=GUIDANCE, inversion_method=P["REAL_INVERSION"],
                                   inner_steps=P["NULL_TEXT_INNER_STEPS"])
    made.compare.value = {compare}
    return made

def press(panel, kind, seed, target, report=True):
    panel.source_kind.value, panel.seed.value, panel.target_prompt.value = kind, seed, target
    cache = default_source_cache()
    hits, inversions = cache.hits, common.INVERSIONS.misses
    cpu = time.process_time()
    panel.button.click()
    if panel.error is not None:
        raise panel.error
    if report:
        print("TIMING " + json.dumps({{"panel_s": panel.last_seconds, "cpu_s": time.process_time() - cpu,
                                       "source_replayed": cache.hits - hits,
                                       "inverted": common.INVERSIONS.misses - inversions}}))

def plain_sample(seed, report=True):
    cpu, wall = time.process_time(), time.perf_counter()
    text_to_image(pipe, [P["SOURCE_PROMPT"]], num_steps=STEPS, guidance_scale=GUIDANCE, seed=seed, progress=False)
    if report:
        print("TIMING " + json.dumps({{"panel_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                                       "source_replayed": 0, "inverted": 0}}))

panel = make_panel(real_image, real_prompt)
# warm-up on another real image: every path (new source, replayed source, real image) traced before anything is
# timed, and the timed panel's image still inverted afresh at its first edit
warm_image, warm_prompt, _ = common.source_scene(pipe, P["REAL_SCENE_SEED"] + 1000, objects=objects,
                                                 background=wanted.background)
warm_panel = make_panel(warm_image, warm_prompt)
for warm_up in range({warm_ups}):
    plain_sample(10_000 + warm_up, report=False)
    for kind, seed, colour in (("generated", 10_000 + warm_up, "red"), ("generated", 10_000 + warm_up, "green"),
                               ("real image", 0, "red"), ("real image", 0, "green")):
        press(warm_panel, kind, seed, P["SOURCE_PROMPT"].replace(P["COLOUR_SWAP"][0], colour), report=False)
print("READY", STEPS, GUIDANCE, real_prompt)
"""


def lab_parameters() -> dict:
    """The lab's parameters cell, as papermill reads it (name -> default value)."""
    import ast

    import papermill

    parameters = {}
    for name, info in papermill.inspect_notebook(str(LAB)).items():
        parameters[name] = ast.literal_eval(info["default"])
    return parameters


class Kernel:
    """One IPython kernel with the repository on its path; `run` executes code and returns its stdout lines and the
    round-trip seconds."""

    def __init__(self, threads: int):
        from jupyter_client.manager import start_new_kernel

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "DIFFUSION_LAB_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error",
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, cwd=str(REPO))

    def run(self, code: str, timeout: float = 900) -> tuple[list[str], float]:
        lines, errors = [], []

        def collect(message):
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                lines.extend(content["text"].splitlines())
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))

        start = time.perf_counter()
        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=collect)
        seconds = time.perf_counter() - start
        if reply["content"]["status"] != "ok":
            raise RuntimeError("the kernel failed:\n" + "\n".join(errors))
        return lines, seconds

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def timing(lines: list[str]) -> dict:
    return json.loads(next(line for line in lines if line.startswith("TIMING "))[len("TIMING "):])


def measure(rounds: int, threads: int, compare: bool, model: str | None = None, steps: int | None = None,
            warm_ups: int = 2) -> tuple[dict, str]:
    """Per kind of press, its timings per round; and the kernel's READY line (steps, guidance, the real image's
    caption). warm_ups: rounds of every kind of press on another image before anything is timed."""
    parameters = lab_parameters()
    if model:
        parameters["MODEL"] = model
    if steps:
        parameters["STEPS"] = steps
    source = parameters["SOURCE_PROMPT"]
    old_colour = parameters["COLOUR_SWAP"][0]
    kernel = Kernel(threads)
    try:
        lines, _ = kernel.run(SETUP.format(parameters=json.dumps(parameters), threads=threads, compare=compare,
                                                   warm_ups=warm_ups))
        ready = next(line for line in lines if line.startswith("READY"))
        results: dict[str, list[dict]] = {}

        def record(name: str, code: str) -> None:
            lines, round_trip = kernel.run(code)
            results.setdefault(name, []).append({**timing(lines), "round_trip_s": round_trip})

        def target(index: int) -> str:
            return source.replace(old_colour, [c for c in COLOURS if c != old_colour][index % (len(COLOURS) - 1)])

        record("real image, first edit", f"press(panel, 'real image', 0, {target(0)!r})")
        for index in range(rounds):
            seed = 20_000 + index
            record("plain sample", f"plain_sample({seed})")
            record("generated, new source", f"press(panel, 'generated', {seed}, {target(index)!r})")
            record("generated, another word", f"press(panel, 'generated', {seed}, {target(index + 1)!r})")
            record("real image, another word", f"press(panel, 'real image', 0, {target(index + 1)!r})")
            print(f"round {index + 1}: " + ", ".join(f"{name} {values[-1]['round_trip_s']:.2f} s"
                                                     for name, values in results.items()), flush=True)
    finally:
        kernel.close()
    return results, ready


def table(results: dict, ready: str, rounds: int, threads: int, compare: bool) -> list[str]:
    _, steps, guidance, *caption = ready.split()
    median = {name: {key: statistics.median(v[key] for v in values) for key in values[0]}
              for name, values in results.items()}
    sample = median["plain sample"]
    lines = [f"Lab 4's panel in a kernel: {steps} DDIM steps, guidance {guidance}, {threads} thread(s), "
             f"'also without P2P' {'on' if compare else 'off'}; real image: {' '.join(caption)}; median of {rounds} "
             "rounds (the first real-image edit once)", "",
             "| press Run | round trip (s) | panel timer (s) | kernel CPU (s) | CPU / plain sample | source replayed | "
             "inverted |", "|---|---|---|---|---|---|---|"]
    for name, values in median.items():
        lines.append(f"| {name} | {values['round_trip_s']:.3f} | {values['panel_s']:.3f} | {values['cpu_s']:.3f} | "
                     f"{values['cpu_s'] / sample['cpu_s']:.2f} | {values['source_replayed']:g} | "
                     f"{values['inverted']:g} |")
    return lines


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the kernel")
    parser.add_argument("--no-compare", action="store_true", help="turn the panel's 'also without P2P' off")
    parser.add_argument("--model", default=None, help="the lab's MODEL parameter unless given")
    parser.add_argument("--steps", type=int, default=None, help="the lab's STEPS parameter unless given")
    parser.add_argument("--json", type=Path, default=None, help="also write every timing here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results, ready = measure(args.rounds, args.threads, not args.no_compare, args.model, args.steps)
    text = "\n".join(table(results, ready, args.rounds, args.threads, not args.no_compare))
    print(text)
    if args.json:
        from diffusion_lab.atomic_files import atomic_write_json

        atomic_write_json(args.json, results)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
