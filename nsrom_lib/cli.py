"""Command line: `nsrom ...` and `python -m nsrom_lib ...`.

  run --profile P [--run-dir D] [--set key=value ...] [--only 00,02]
      execute the numbered notebooks in order with papermill into D (default runs/P)
  data synthvoc --out DIR [--profile P] [--seed S] [--set key=value ...] [--force]
      write the SynthVOC benchmark (VOC layout) into DIR
  data stats --root DIR [--split train] [--num-classes C]
      print a VOC-layout dataset's statistics

Parsing and `--help` import no torch; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsrom", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the numbered notebooks with papermill")
    r.add_argument("--profile", default="default", help="smoke, quick, default, gpu or voc")
    r.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (repeatable)")
    r.add_argument("--only", default=None,
                   help="comma-separated notebook numbers to run, e.g. 00,02")

    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synthvoc", help="write the SynthVOC benchmark")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--profile", default="default")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--force", action="store_true", help="rewrite even if complete")
    s.add_argument("--workers", type=int, default=None)
    st = dsub.add_parser("stats", help="statistics of a VOC-layout dataset")
    st.add_argument("--root", required=True)
    st.add_argument("--split", default="train")
    st.add_argument("--num-classes", type=int, default=None)
    st.add_argument("--json", action="store_true", help="print JSON only")
    return p


def _cmd_run(args) -> int:
    from nsrom_lib.config import make_config, parse_set
    from nsrom_lib.pipeline import default_runs_dir, list_notebooks, run_notebooks

    overrides = parse_set(args.set)
    make_config(args.profile, **overrides)  # fail fast on a bad profile or key
    run_dir = Path(args.run_dir) if args.run_dir else default_runs_dir() / args.profile
    notebooks = list_notebooks()
    if args.only:
        wanted = {x.strip().zfill(2) for x in args.only.split(",") if x.strip()}
        notebooks = [nb for nb in notebooks if nb.name[:2] in wanted]
        if not notebooks:
            print(f"error: --only {args.only}: no notebook with those numbers", file=sys.stderr)
            return 2
    print(f"nsrom run: profile {args.profile}, {len(notebooks)} notebook(s) -> {run_dir}")
    t0 = time.perf_counter()
    try:
        done = run_notebooks(run_dir, args.profile, overrides, notebooks=notebooks)
    except Exception as e:  # papermill's error carries the failing cell
        name = type(e).__name__
        print(f"\nerror: the run stopped ({name}): {str(e).strip()[:2000]}", file=sys.stderr)
        print(f"executed copies so far are in {run_dir / 'notebooks'}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    print("\nSummary")
    for d in done:
        print(f"  {d['notebook']:<40} {d['seconds']:>8.1f} s")
    print(f"  {'total':<40} {total:>8.1f} s")
    print(f"executed notebooks: {run_dir / 'notebooks'}")
    print(f"configuration and stage records: {run_dir}")
    return 0


def _cmd_synthvoc(args) -> int:
    from nsrom_lib.config import make_config, parse_set
    from nsrom_lib.data.synthvoc import generate_synthvoc
    from nsrom_lib.pipeline import synthvoc_config_for

    overrides = parse_set(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = make_config(args.profile, **overrides)
    scfg = synthvoc_config_for(cfg)
    t0 = time.perf_counter()
    meta = generate_synthvoc(args.out, scfg, force=args.force, workers=args.workers)
    n = scfg.n_train + scfg.n_val
    print(f"SynthVOC ({args.profile}, seed {scfg.seed}): {n} images of {scfg.image_size} px, "
          f"{scfg.num_classes} classes -> {args.out} "
          f"({time.perf_counter() - t0:.1f} s; generation took {meta['seconds']} s)")
    return 0


def _cmd_stats(args) -> int:
    from nsrom_lib.data.stats import dataset_statistics, load_split_arrays
    from nsrom_lib.data.voc import read_class_names

    num_classes = args.num_classes or len(read_class_names(args.root))
    stats = dataset_statistics(load_split_arrays(args.root, args.split), num_classes)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for k, v in stats.items():
            print(f"{k:<22} {v:.4f}" if isinstance(v, float) else f"{k:<22} {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nsrom_lib.config import ConfigError
    from nsrom_lib.data.io import DataError

    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "data" and args.data_command == "synthvoc":
            return _cmd_synthvoc(args)
        if args.command == "data" and args.data_command == "stats":
            return _cmd_stats(args)
    except (ConfigError, DataError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
