"""Every claim of the labs as a rate or a mean with its 95% interval, over N scenes and seeds (default N = 64).

    python pipelines/claims.py                       # all labs' studies at N = 64 -> outputs/claims/
    python pipelines/claims.py --labs 1 --n 16       # lab 1 only, 16 scenes
    python pipelines/claims.py --quick               # small N (what the test runs)

Each study is one function of `diffusion_lab.studies` (the labs call the same functions on a smaller sample beside
their worked example) at the labs' default parameters. Prints one line per claim (the rate or mean, n, the Wilson or
bootstrap interval, and whether the claim holds) and writes claims.json (every number) and claims.md (the tables
README and the labs quote) atomically to --out. The machine, N and the seconds each study took are recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAB1_DEFAULTS = dict(obj={"shape": "triangle", "colour": "blue", "size": "large"}, background="gray",
                     edit_kind="shape", edit_value="square", strengths=[0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
                     num_steps=20, guidance_scale=5.0, seed=0)


def lab1(pipe, n: int, quick: bool) -> dict:
    """Lab 1: edit done / layout kept / both per strength (naive noising of a large blue triangle to a square)."""
    from diffusion_lab.studies import naive_noising as study_lib

    settings = dict(LAB1_DEFAULTS)
    if quick:
        settings["strengths"] = [0.1, 0.5, 1.0]
    study = study_lib.strength_tradeoff(pipe, scene_seeds=range(n), **settings)
    claims = study_lib.tradeoff_claims(study, intervals=not quick)
    spot = study_lib.sweet_spot(study)
    return {
        "title": "Lab 1: naive noising trades the edit against the layout "
                 f"({settings['obj']['size']} {settings['obj']['colour']} {settings['obj']['shape']} -> "
                 f"{settings['edit_value']}, S = {settings['num_steps']})",
        "table": study_lib.tradeoff_rows(study),
        "claims": claims + ([{"claim": f"sweet spot: s = {spot['strength']:g}", "holds": True,
                              "evidence": f"edit done and layout kept together in {spot['rate']}"}] if spot else []),
        "numbers": {"n": study["n"], "strengths": study["strengths"],
                    "rates": {k: [r.as_dict() for r in v] for k, v in study["rates"].items()}},
    }


STUDIES = {"1": lab1}


def markdown(results: dict) -> str:
    lines = [f"# The labs' claims, measured (N = {results['n']}, 95% intervals)", "",
             f"`python pipelines/claims.py{' --quick' if results['quick'] else ''} --n {results['n']}` on "
             f"{results['machine']}.", ""]
    for key, study in results["studies"].items():
        lines += [f"## {study['title']}", f"({study['seconds']:.0f} s)", ""]
        rows = study["table"]
        if rows:
            columns = list(rows[0])
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
            lines.append("")
        lines += [f"- {'holds' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']} ({c['evidence']})" for c in study["claims"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labs", nargs="*", default=list(STUDIES), choices=list(STUDIES), help="labs (default all)")
    parser.add_argument("--n", type=int, default=None, help="scenes per study (default 64; --quick: 6)")
    parser.add_argument("--quick", action="store_true", help="small N and fewer settings (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "claims"))
    args = parser.parse_args(argv)
    n = args.n or (6 if args.quick else 64)
    if n < 1:
        parser.error("--n must be at least 1")

    import torch

    from diffusion_lab.atomic_files import atomic_write_text
    from diffusion_lab.models import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("shapes-tiny")
    results = {"n": n, "quick": args.quick, "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
               + f", {args.threads} torch thread(s)", "studies": {}}
    all_hold = True
    for key in args.labs:
        start = time.process_time()
        study = STUDIES[key](pipe, n, args.quick)
        study["seconds"] = time.process_time() - start
        results["studies"][key] = study
        print(f"\n{study['title']}  [{study['seconds']:.0f} s CPU]", flush=True)
        for row in study["table"]:
            print("  " + "  ".join(f"{k}: {v}" for k, v in row.items()))
        for claim in study["claims"]:
            all_hold &= bool(claim["holds"])
            print(f"  {'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']} -- {claim['evidence']}",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "claims.json", json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(out / "claims.md", markdown(results))
    print(f"\nwrote {out / 'claims.json'} and {out / 'claims.md'}")
    return 0 if all_hold else 1


if __name__ == "__main__":
    sys.exit(main())
