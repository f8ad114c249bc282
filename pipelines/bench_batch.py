"""Benchmark batch editing: rows per minute and where a chunk's time goes, for several chunk sizes.

    python pipelines/bench_batch.py [--rows 32] [--chunk-sizes 1 8 32] [--steps 20] [--kind generated|scene]
                                    [--model shapes-tiny] [--workers 1] [--out outputs/bench_batch]

Each chunk size runs the same manifest (word swaps of the shapes world: one-object scenes, the shape word
replaced) into a fresh output folder with `diffusion_lab.batch.run_batch`, and reports:
    rows/min            rows over the whole run (validation, chunks, report; "driver s" is the part outside the
                        chunks: validation, fingerprint, report)
    kernel start        share of the chunks' time spent starting the kernel and in papermill (chunk wall time
                        minus what the notebook measured inside)
    imports             importing torch, diffusers and diffusion_lab in the kernel
    model load          models.load_pipeline, once per chunk
    editing             the rows themselves (inversion for --kind scene, P2P sampling, figures, metrics, writes)
Kernel start, imports and model load are paid once per chunk: small chunks spend most of their time on them.
The table is printed and written to <out>/bench_batch.md (results.json holds the per-chunk numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_manifest(path: Path, rows: int, steps: int, kind: str) -> Path:
    """`rows` word swaps (the shape word) of one-object shapes scenes, as a YAML manifest."""
    import yaml

    from diffusion_lab.shapes import SHAPES, caption, random_scene

    entries = []
    for index in range(rows):
        scene = random_scene(index, num_objects=1)
        source = caption(scene)
        shape = scene.objects[0].shape
        target = source.replace(shape, SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)], 1)
        entry = {"id": f"bench-{index:03d}", "source_prompt": source, "target_prompts": [target], "edit": "replace",
                 "seed": index}
        if kind == "scene":
            entry.update({"scene_seed": index, "inversion": "negative_prompt"})
        entries.append(entry)
    path.write_text(yaml.safe_dump({"defaults": {"num_steps": steps}, "rows": entries}, sort_keys=False))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per edit")
    parser.add_argument("--kind", choices=("generated", "scene"), default="generated",
                        help="generated sources, or rendered scenes inverted (negative-prompt inversion)")
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--warm-kernels", action="store_true", help="one kernel per worker across chunks")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="local processes or a Dask LocalCluster of --workers processes")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_batch"))
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffusion_lab.batch import run_batch
    from diffusion_lab.batch.runner import load_tokenizer

    import diffusion_lab.editing  # noqa: F401  (the driver's own imports, paid before the first timed run)

    load_tokenizer(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(out / "manifest.yaml", args.rows, args.steps, args.kind)
    results = []
    for size in args.chunk_sizes:
        run_dir = out / f"chunk-{size}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh folder: no row is skipped
        print(f"chunk size {size}: {args.rows} rows ...", flush=True)
        result = run_batch(manifest, run_dir, args.model, chunk_size=size, workers=args.workers, progress=False,
                           executor=args.executor, warm_kernels=args.warm_kernels, log=lambda message: None)
        chunks = result.chunks
        chunk_time = sum(c["wall_seconds"] for c in chunks) or float("nan")
        imports = sum(c.get("import_seconds", 0.0) for c in chunks)
        load = sum(c.get("load_seconds", 0.0) for c in chunks)
        editing = sum(c.get("row_seconds", 0.0) for c in chunks)
        kernel = chunk_time - imports - load - editing
        results.append({
            "chunk_size": size, "rows": args.rows, "ok": result.counts.get("ok", 0), "chunks": len(chunks),
            "wall_seconds": result.seconds, "rows_per_minute": 60.0 * args.rows / result.seconds,
            "chunk_seconds": chunk_time, "kernel_start_share": kernel / chunk_time, "imports_share": imports / chunk_time,
            "model_load_share": load / chunk_time, "editing_share": editing / chunk_time,
            "per_chunk": chunks, "mean_kernel_start_s": kernel / len(chunks), "mean_imports_s": imports / len(chunks),
            "mean_model_load_s": load / len(chunks), "mean_editing_s": editing / len(chunks),
            "threads": sorted({c.get("threads") for c in chunks}, key=str),
        })
        if result.exit_code != 0:
            print(f"  warning: exit code {result.exit_code}; see {run_dir / 'report.md'}", flush=True)

    cores = os.cpu_count()
    lines = [
        f"Batch editing, {args.rows} rows ({args.kind}, {args.steps} DDIM steps), model {args.model}, "
        f"{args.workers} worker(s) ({args.executor}{', warm kernels' if args.warm_kernels else ''}), {cores} CPU cores, load average {os.getloadavg()[0]:.1f}",
        "",
        "| chunk size | chunks | rows ok | wall s | rows/min | kernel start | imports | model load | editing |"
        " per chunk: kernel start / imports / load / editing s | torch threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['chunk_size']} | {r['chunks']} | {r['ok']}/{r['rows']} | {r['wall_seconds']:.1f} | "
            f"{r['rows_per_minute']:.1f} | {r['kernel_start_share']:.0%} | {r['imports_share']:.0%} | "
            f"{r['model_load_share']:.0%} | {r['editing_share']:.0%} | {r['mean_kernel_start_s']:.1f} / "
            f"{r['mean_imports_s']:.1f} / {r['mean_model_load_s']:.1f} / {r['mean_editing_s']:.1f} | {r['threads']} |"
        )
    lines += ["", "Shares are of the chunks' time; kernel start, imports and model load are paid once per chunk."]
    table = "\n".join(lines)
    print("\n" + table)
    (out / "bench_batch.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out / 'bench_batch.md'}, {out / 'results.json'}")
    return 0 if all(r["ok"] == r["rows"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
