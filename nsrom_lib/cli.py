"""Command line: `nsrom ...` and `python -m nsrom_lib ...`.

  run --profile P [--run-dir D] [--set key=value ...] [--only 00,02]
      execute the numbered notebooks in order with papermill into D (default runs/P)
  results [--seeds 0,1,2] [--profile P] [--name NAME] [--run-root R] [--set key=value ...]
      the stages through `results` once per seed into R/NAME/seed<k> (default runs/<profile>),
      then R/NAME/summary.json, summary.md, summary.png: every row and step over the seeds
  data synthvoc --out DIR [--profile P] [--seed S] [--set key=value ...] [--force]
      write the SynthVOC benchmark (VOC layout) into DIR
  data stats --root DIR [--split train] [--num-classes C]
      print a VOC-layout dataset's statistics
  data saliency --images DIR --out DIR [--method ft|spectral] [--list FILE]
      8-bit gray saliency maps {name}.png made from the images alone (no training), resumable
  data saliency-eval --root DIR [--split val] [--method ft|spectral|dataset ...] [--maps DIR ...]
      which salient and non-salient SynthVOC objects each source of maps covers, false alarms
  labels pseudo --list LIST --saliency SAL_DIR --oacam OACAM_DIR --cam CAM_DIR --out OUT_DIR
      BE + POM pseudo labels (docs/method.md §3, §4) from official-format map folders
  labels masked --list LIST --pred PRED_DIR --pseudo PSEUDO_DIR --saliency SAL_DIR --out OUT_DIR
      NSRM masked pseudo labels (docs/method.md §6)
  bench [--profile P] [--limit N] [--label-limit N] [--run-dir D] [--json]
      label, training and inference throughput, peak memory, the last run's stage times
  bench labels [--run-dir D] [--device auto] [--batch-size N] [--limit N] [--json]
      time the batched label functions against the per-image references
  bench precision [--profile P] [--limit N] [--repeats R] [--json]
      one epoch of each training loop in float32 and with cpu_bf16 (bfloat16), alternating
  bench memory [--images 500,2000] [--val N] [--out DIR] [--json]
      peak memory of the pseudo and seg1 stages on drawn VOC trees of growing size
  bench cost [--profile voc] [--gpu h200|a100] [--cpu-steps N] [--json]
      FLOPs per stage, counted, and the minutes they would take on 1 and 4 GPUs (an estimate)

Parsing and `--help` import no torch; each command imports what it needs.
Exit status: 0 done; 2 bad input (a bad option, configuration or input file, a missing
device: one `nsrom: error: ...` line on stderr naming it and the fix, nothing written); 1 a
failed write (disk full, read-only) or a failed run; 130 interrupted (Ctrl-C; finished stages
are kept). `nsrom --debug ...` shows the traceback instead of the one line; an unexpected
error always shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from nsrom_lib.data.label_defaults import MASKED_DEFAULTS, PSEUDO_DEFAULTS  # no torch
from nsrom_lib.params import BEParams, NSRMParams, POMParams, RuleParams, bounds  # no torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nsrom", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of its one-line message")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_results(sub)
    _add_stage(sub)
    _add_data(sub)
    _add_labels(sub)
    _add_compare(sub)
    _add_bench(sub)
    return p


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="execute the numbered notebooks with papermill")
    r.add_argument("--profile", default="default", help="smoke, quick, default, gpu or voc")
    r.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value (repeatable)")
    r.add_argument("--only", default=None,
                   help="comma-separated notebook numbers to run, e.g. 00,02")
    _add_nproc(r)


def _process_count(text: str) -> int:
    """`--nproc`'s value: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1 or more processes")
    return n


def _add_nproc(p: argparse.ArgumentParser,
               help: str = "train every network in N processes (torchrun, "
               "DistributedDataParallel): one per GPU, or N sharing the CPU; the same as "
               "--set nproc=N") -> None:
    p.add_argument("--nproc", type=_process_count, default=None, metavar="N", help=help)


def _with_nproc(args, overrides: dict) -> dict:
    """--set's overrides with --nproc in them; ValueError when the two disagree."""
    if args.nproc is None:
        return overrides
    if "nproc" in overrides and int(overrides["nproc"]) != args.nproc:
        raise ValueError(f"--nproc {args.nproc} and --set nproc={overrides['nproc']} disagree: "
                         "give one of them")
    return {**overrides, "nproc": args.nproc}


#: `nsrom stage` names: the stages that train a network.
TRAINING_STAGES = ("warmup", "classifier", "iam", "segmentation")


def _add_stage(sub) -> None:
    s = sub.add_parser("stage", help="train one network of a run folder (in N processes)",
                       description="Computes one training stage of the run folder RUN_DIR with "
                       "its stored configuration (config.json), and first any stage it needs. "
                       "With --nproc N (or the run's nproc setting) it trains in N processes "
                       "started by torchrun; `nsrom run` and `nsrom results` do this for every "
                       "network of a run with nproc > 1.")
    s.add_argument("name", choices=TRAINING_STAGES, help="the network to train")
    s.add_argument("--run-dir", required=True, help="an existing run folder")
    s.add_argument("--no-glore", action="store_true",
                   help="classifier, iam: the GloRe-off ablation's network")
    s.add_argument("--which", default="pom_round1",
                   help="segmentation: which model (default pom_round1, the stage seg1; "
                   "nsrm_round2 is seg2, gt the upper bound)")
    _add_nproc(s, help="training processes (default: the run's nproc setting)")


def _parse_seeds(text: str) -> list[int]:
    """`--seeds`: comma-separated distinct non-negative integers, e.g. "0,1,2"; ValueError
    with the message to print otherwise."""
    parts = [x.strip() for x in str(text).split(",")]
    if not all(x.isdigit() for x in parts):
        raise ValueError(f"--seeds {text!r}: expected comma-separated non-negative integers, "
                         "e.g. --seeds 0,1,2")
    seeds = [int(x) for x in parts]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds {text!r}: seed {twice[0]} is listed twice; each seed is one "
                         "run, give it once")
    return seeds


def _add_results(sub) -> None:
    r = sub.add_parser("results", help="the pipeline once per seed, then the summary over seeds",
                       description="Runs the stages through `results` (no notebooks) once per "
                       "seed into RUN_ROOT/NAME/seed<k>/, reusing every finished stage, then "
                       "writes RUN_ROOT/NAME/summary.json, summary.md and summary.png: every row "
                       "as mean, sd and min-max over the seeds, every step as a paired "
                       "difference per seed with the seeds where it is positive, and the "
                       "machine.")
    r.add_argument("--seeds", default="0,1,2", metavar="S,S,...",
                   help="comma-separated seeds (default 0,1,2)")
    r.add_argument("--profile", default="default", help="smoke, quick, default, gpu or voc")
    r.add_argument("--name", default=None, help="folder name under the run root (default: the profile)")
    r.add_argument("--run-root", default=None,
                   help="where the named folder goes (default runs/, or $NSROM_RUNS_DIR)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value for every seed (repeatable; not seed)")
    _add_nproc(r)


def _add_data(sub) -> None:
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
    _add_saliency(dsub)


def _add_saliency(dsub) -> None:
    sa = dsub.add_parser("saliency", help="saliency maps from the images alone (no training)",
                         description="Writes OUT/{name}.png, an 8-bit gray saliency map (0..255, "
                         "the image's size, the Saliency/ format) of every image in IMAGES, by a "
                         "classical method that needs no training and no download. Maps already "
                         "in OUT are skipped, so an interrupted run goes on where it stopped.")
    sa.add_argument("--images", required=True, help="folder of .jpg / .jpeg / .png images")
    sa.add_argument("--out", required=True,
                    help="output folder (created; never the images folder or inside it)")
    sa.add_argument("--method", default="ft",
                    help="ft (frequency-tuned, the default) or spectral (spectral residual)")
    sa.add_argument("--list", default=None, metavar="FILE",
                    help="only these images: one name per line, first token (train_cls.txt or "
                    "train_aug.txt format)")
    sa.add_argument("--quiet", action="store_true", help="no progress bar")
    sa.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev = dsub.add_parser("saliency-eval", help="saliency maps against SynthVOC's instances",
                         description="For each source of maps, the share of salient and of "
                         "non-salient instances found (at least half of an instance's pixels at "
                         "or above the threshold), their mean coverage, the share of background "
                         "pixels at or above the threshold (false alarm), the share of background "
                         "pixels that are not 0 (what NSRM's object mask takes in) and "
                         "milliseconds per image, side by side.")
    ev.add_argument("--root", required=True, help="a SynthVOC folder (instances.json, "
                    "SegmentationObject/)")
    ev.add_argument("--split", default="val", help="split to measure (default val)")
    ev.add_argument("--method", action="append", default=None,
                    help="ft, spectral (computed here) or dataset (ROOT/Saliency); repeatable "
                    "(default: all three; with --maps, dataset)")
    ev.add_argument("--maps", action="append", default=[], metavar="DIR",
                    help="a folder of {name}.png maps to measure as well (repeatable)")
    ev.add_argument("--limit", type=int, default=None, help="the first N images of the split")
    ev.add_argument("--threshold", type=int, default=128,
                    help="saliency that counts as marked, 0..255 (default 128)")
    ev.add_argument("--json", action="store_true", help="print JSON only")


def _add_labels(sub) -> None:
    lab = sub.add_parser("labels", help="pseudo / masked labels from official-format folders")
    lsub = lab.add_subparsers(dest="labels_command", required=True)
    ps = lsub.add_parser("pseudo", help="BE + POM pseudo labels (docs/method.md §3, §4)",
                         description="Background extraction, potential object mining and the 1% "
                         "rule on official-format folders; writes OUT_DIR/{name}.png (VOC palette, "
                         "0 bg, class id + 1, 255 ignore).")
    ps.add_argument("--list", required=True, help="train_cls.txt-format list: 'name c1 c2 ...'")
    ps.add_argument("--saliency", required=True, help="folder of {name}.png 8-bit saliency maps")
    ps.add_argument("--oacam", required=True, help="folder of {name}_{cls}.png OA-CAMs (BE)")
    ps.add_argument("--cam", required=True, help="folder of {name}_{cls}.png CAMs (POM)")
    ps.add_argument("--out", required=True, help="output folder of label PNGs")
    for flag, what in (("fg", "BE score floor"),
                       ("conflict", "BE: two channels above this -> ignore"),
                       ("bg", "BE: background with saliency >= bg -> ignore, 0..255"),
                       ("att", "BE: background with an OA-CAM > att -> ignore"),
                       ("pom", "POM: top-quartile floor")):  # fmt: skip
        ps.add_argument(f"--{flag}", type=float, default=PSEUDO_DEFAULTS[flag],
                        help=f"{what} (default %(default)s)")
    _common_label_args(ps, PSEUDO_DEFAULTS)

    ms = lsub.add_parser("masked", help="NSRM masked pseudo labels (docs/method.md §6)",
                         description="Non-salient region masking on official-format folders; "
                         "writes OUT_DIR/{name}.png (VOC palette, 255 ignore).")
    ms.add_argument("--list", required=True, help="train_cls.txt-format list: 'name c1 c2 ...'")
    ms.add_argument("--pred", required=True, help="folder of {name}.png round-1 predictions")
    ms.add_argument("--pseudo", required=True, help="folder of {name}.png POM pseudo labels")
    ms.add_argument("--saliency", required=True, help="folder of {name}.png 8-bit saliency maps")
    ms.add_argument("--out", required=True, help="output folder of label PNGs")
    ms.add_argument("--kernel", type=int, default=MASKED_DEFAULTS["kernel"],
                    help="dilation kernel size (default %(default)s)")
    _common_label_args(ms, MASKED_DEFAULTS)


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="finished runs side by side (seeds, variants)",
                       description="The ablation of several finished runs in one table: val mIoU "
                       "of every model per run with mean and range, the gain of each step, and "
                       "how many runs meet each target.")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders")
    c.add_argument("--json", action="store_true", help="print JSON only")


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: everything, or `bench labels`, `precision`, `cost`",
                       description="Without a sub-command: label throughput (batched vs reference), "
                       "classifier and segmentation training and inference throughput, peak "
                       "memory and the wall time per stage of the profile's last run, as a table "
                       "(or JSON).")
    b.add_argument("--profile", default="default", help="dataset and network sizes (default: default)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    b.add_argument("--limit", type=int, default=512,
                   help="training images for the training/inference throughput (default 512)")
    b.add_argument("--label-limit", type=int, default=None,
                   help="training images for the label benchmark (default: all)")
    b.add_argument("--run-dir", default=None, help="the run whose stage times to show (default runs/<profile>)")
    b.add_argument("--json", action="store_true", help="print JSON only")
    bsub = b.add_subparsers(dest="bench_command", required=False)
    bl = bsub.add_parser("labels", help="batched label functions vs the per-image references",
                         description="Times BE + POM (+ 1% rule) and NSRM, batched torch vs the "
                         "per-image numpy references, on the same inputs: the default profile's "
                         "SynthVOC training set with maps derived from GT, or a run's maps.")
    bl.add_argument("--run-dir", default=None,
                    help="a run whose maps/cam and maps/oacam to use (default: GT-derived maps)")
    bl.add_argument("--profile", default="default", help="dataset profile (default: default)")
    bl.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    bl.add_argument("--batch-size", type=int, default=None,
                    help="images per batched call (default: 256 for pseudo, 64 for masked)")
    bl.add_argument("--limit", type=int, default=None, help="use the first N training images")
    bl.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    bl.add_argument("--threads", type=int, default=1,
                    help="torch threads for the batched path (default 1, as the numpy reference; "
                    "0: torch's default)")
    bl.add_argument("--json", action="store_true", help="print JSON only")
    bp = bsub.add_parser("precision", help="training in float32 vs bfloat16 autocast (cpu_bf16)",
                         description="One epoch of the classifier, the integral attention model "
                         "and the segmentation network on the first N training images, in float32 "
                         "and with cpu_bf16 (bfloat16 autocast on the CPU), alternating, in one "
                         "process; prints the median seconds of each and their ratio.")
    bp.add_argument("--profile", default="default", help="dataset and network sizes (default: default)")
    bp.add_argument("--limit", type=int, default=256, help="training images (default 256)")
    bp.add_argument("--repeats", type=int, default=3,
                    help="timed fp32/bf16 pairs per network (default 3)")
    bp.add_argument("--json", action="store_true", help="print JSON only")
    bm = bsub.add_parser("memory", help="peak memory of pseudo and seg1 as the split grows",
                         description="Draws PASCAL VOC trees as downloaded with VOC-sized JPEGs "
                         "(one per split size), runs the voc profile's data path with small "
                         "networks up to the maps, then the pseudo and seg1 stages, each in a "
                         "fresh process that reports its peak resident memory.")
    bm.add_argument("--images", default="500,2000",
                    help="training split sizes, comma-separated (default 500,2000)")
    bm.add_argument("--val", type=int, default=50, help="val images per tree (default 50)")
    bm.add_argument("--out", default="runs/bench-memory",
                    help="folder for the trees and runs, reused when present")
    bm.add_argument("--json", action="store_true", help="print JSON only")
    bc = bsub.add_parser("cost", help="FLOPs per stage and the GPU time they take, on paper",
                         description="Counts the FLOPs per image of every network of the profile "
                         "(FlopCounterMode, one batch built as the stages build it, no weights "
                         "needed), multiplies them by the passes each stage makes, and estimates "
                         "the minutes per stage on 1 and 4 GPUs from the GPU's data-sheet peak, "
                         "an assumed utilisation and an assumed scaling efficiency. Also measures "
                         "the FLOP/s of a few training steps on this CPU. No GPU is used.")
    bc.add_argument("--profile", default="voc", help="dataset and network sizes (default: voc)")
    bc.add_argument("--gpu", default="h200", choices=["h200", "a100"],
                    help="the GPU whose peak to assume (default h200)")
    bc.add_argument("--cpu-steps", type=int, default=3,
                    help="timed training steps per network on this CPU (default 3; 0 skips the "
                    "CPU measurement and the CRF timing)")
    bc.add_argument("--json", action="store_true", help="print JSON only")


def _common_label_args(p: argparse.ArgumentParser, defaults: dict[str, float]) -> None:
    """Options of both `labels` commands; defaults: PSEUDO_DEFAULTS or MASKED_DEFAULTS."""
    p.add_argument("--min-ratio", type=float, default=defaults["ratio"],
                   help="1%% rule: labels with fewer labelled pixels become all ignore "
                   "(default %(default)s)")
    p.add_argument("--num-classes", type=int, default=20, help="foreground classes (default 20)")
    p.add_argument("--strict", action="store_true", help="a missing per-class map is an error")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per batch (default 1, fastest: the workers use the "
                   "cores; 0: torch's default)")
    p.add_argument("--workers", type=int, default=None,
                   help="batches read, computed and encoded at once, by worker processes on a "
                   "CPU, threads on a GPU (default: the CPU cores, at most 8; 1: all in one "
                   "thread)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _cmd_run(args) -> int:
    from nsrom_lib.config import make_config, parse_set
    from nsrom_lib.pipeline import default_runs_dir, list_notebooks, run_notebooks

    overrides = _with_nproc(args, parse_set(args.set))
    cfg = make_config(args.profile, **overrides)  # fail fast on a bad profile or key
    run_dir = Path(args.run_dir) if args.run_dir else default_runs_dir() / args.profile
    notebooks = list_notebooks()
    if args.only:
        wanted = {x.strip().zfill(2) for x in args.only.split(",") if x.strip()}
        available = [nb.name[:2] for nb in notebooks]
        notebooks = [nb for nb in notebooks if nb.name[:2] in wanted]
        if not notebooks:
            return _fail(f"--only {args.only}: no notebook with those numbers; "
                         f"choose among {','.join(available)}")
    problem = _run_preflight(cfg, run_dir)
    if problem:
        return _fail(problem)
    print(f"nsrom run: profile {args.profile}, {len(notebooks)} notebook(s) -> {run_dir}")
    t0 = time.perf_counter()
    try:
        done = run_notebooks(run_dir, args.profile, overrides, notebooks=notebooks)
    except Exception as e:  # papermill's error carries the failing cell
        name = type(e).__name__
        print(f"\nnsrom: error: the run stopped ({name}): {str(e).strip()[:2000]}",
              file=sys.stderr)
        print(f"executed copies so far are in {run_dir / 'notebooks'}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    print("\nSummary")
    for d in done:
        print(f"  {d['notebook']:<40} {d['seconds']:>8.1f} s")
    print(f"  {'total':<40} {total:>8.1f} s")
    print(f"executed notebooks: {run_dir / 'notebooks'}")
    print(f"configuration and stage records: {run_dir}")
    if (Path(run_dir) / "results" / "metrics.json").is_file():
        _print_results(run_dir, args.profile, overrides, done)
    return 0


def _cmd_results(args) -> int:
    from nsrom_lib.config import make_config, parse_set
    from nsrom_lib.pipeline import default_runs_dir

    try:
        seed_list = _parse_seeds(args.seeds)
    except ValueError as e:
        return _fail(str(e))
    overrides = _with_nproc(args, parse_set(args.set))
    if "seed" in overrides:
        return _fail(f"--set seed={overrides['seed']}: the seeds come from --seeds "
                     f"(e.g. --seeds {overrides['seed']}); leave seed out of --set")
    cfgs = [make_config(args.profile, **overrides, seed=s) for s in seed_list]  # fail fast
    name = args.name or args.profile
    if not name.strip() or Path(name).name != name or name in (".", ".."):
        return _fail(f"--name {name!r}: give a folder name (no '/'), e.g. --name {args.profile}")
    root = (Path(args.run_root) if args.run_root else default_runs_dir()) / name
    problem = _run_preflight(cfgs[0], root)
    if problem:
        return _fail(problem)
    seeds = ",".join(map(str, seed_list))
    print(f"nsrom results: profile {args.profile}, seeds {seeds} -> {root}")
    from nsrom_lib.pipeline import ensure_seed_results, machine_info

    dirs = []
    for seed in seed_list:
        run_dir = root / f"seed{seed}"
        t0 = time.perf_counter()
        _, reused = ensure_seed_results(run_dir, args.profile, seed, overrides)
        how = "finished before, reused" if reused else "computed"
        print(f"  seed {seed}: {how} ({time.perf_counter() - t0:.1f} s) -> {run_dir}")
        dirs.append(run_dir)
    from nsrom_lib.compare import seeds_markdown, summarise_seeds, write_seeds_summary

    summary = summarise_seeds(dirs, machine=machine_info())
    title = f"Results over seeds: {name}"
    paths = write_seeds_summary(summary, root, title=title)
    print()
    print(seeds_markdown(summary, title))
    print("summary: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _print_results(run_dir, profile: str, overrides: dict, done: list) -> None:
    """Rewrite the run's report.md with the notebook times and print its ablation table."""
    from nsrom_lib.pipeline import open_run, results_table, stored_checks, write_report

    run = open_run(run_dir, profile, **overrides)
    report = write_report(run, notebooks=done)
    metrics = json.loads((Path(run_dir) / "results" / "metrics.json").read_text())
    print("\nAblation (val split; every rate a fraction)")
    print(results_table(metrics))
    for check in stored_checks(metrics).values():
        print(f"  {'met    ' if check['ok'] else 'MISSED '} {check['text']}")
    print(f"report: {report}")


def _run_preflight(cfg, run_dir: Path) -> str | None:
    """What would stop a run later, found before any notebook starts: a message, or None.

    The dataset folder, the device, ImageNet weights in the torch cache, a writable run folder.
    """
    if cfg.data_root is not None and not Path(cfg.data_root).expanduser().is_dir():
        return (f"data_root {cfg.data_root} does not exist. Point --set data_root=... at a "
                "VOC-layout folder (see data/README.md), or leave it unset for SynthVOC.")
    weights = []
    if cfg.pretrained:
        from nsrom_lib.models.classifier import VGG16_WEIGHTS_FILE

        weights.append(("pretrained", "backbone", VGG16_WEIGHTS_FILE))
    if cfg.seg_pretrained:
        from nsrom_lib.models.segmentation import RESNET_WEIGHTS_FILES

        weights.append(("seg_pretrained", "seg_backbone", RESNET_WEIGHTS_FILES[cfg.seg_backbone]))
    if weights:
        from nsrom_lib.models.pretrained import cached_weights_path

        for key, backbone, filename in weights:
            path = cached_weights_path(filename)
            if not path.is_file():
                return (f"{key}=true needs the ImageNet weights of {backbone}={getattr(cfg, backbone)} "
                        f"at {path} (nothing is downloaded). Copy {filename} there (from "
                        f"https://download.pytorch.org/models/{filename}, or from the torch hub "
                        "cache of a machine with internet; TORCH_HOME sets the cache folder), "
                        f"or use --set {key}=false.")
    if cfg.data_root is not None:
        from nsrom_lib.data.io import DataError
        from nsrom_lib.data.view import check_sources
        from nsrom_lib.pipeline.stages.data import data_sources

        try:
            check_sources(data_sources(cfg, cfg.data_root), cfg.num_classes)
        except DataError as e:
            return f"{e} See data/README.md, \"PASCAL VOC 2012, as downloaded\"."
    if cfg.device != "auto":
        from nsrom_lib.device import resolve_device

        try:
            resolve_device(cfg.device)
        except RuntimeError as e:
            return f"--set device={cfg.device}: {e}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return (f"cannot create the run folder {run_dir}: {e.strerror or e}. "
                "Choose a writable --run-dir.")
    return None


def _cmd_stage(args) -> int:
    import dataclasses

    from nsrom_lib import distributed as dist
    from nsrom_lib.device import resolve_device
    from nsrom_lib.pipeline import (
        SEG_MODELS,
        Run,
        ensure_classifier,
        ensure_iam,
        ensure_segmentation,
        ensure_warmup,
        reopen_run,
    )

    if args.which not in SEG_MODELS:
        return _fail(f"--which {args.which}: choose one of {', '.join(SEG_MODELS)}")
    run = reopen_run(args.run_dir)
    if args.nproc is not None and args.nproc != run.cfg.nproc and not dist.launched():
        run = Run(run.dir, dataclasses.replace(run.cfg, nproc=args.nproc))  # not keyed
    if dist.launched():  # one of the processes torchrun started: join the others first
        dist.init(resolve_device(run.cfg.device))
    t0 = time.perf_counter()
    glore = not args.no_glore
    calls = {"warmup": lambda: ensure_warmup(run),
             "classifier": lambda: ensure_classifier(run, glore=glore),
             "iam": lambda: ensure_iam(run, glore=glore),
             "segmentation": lambda: ensure_segmentation(run, args.which)}
    try:
        rec = calls[args.name]() or {}
    finally:
        dist.finish()
    if dist.is_main():
        n = rec.get("processes", 1)
        print(f"nsrom stage {args.name}: done ({time.perf_counter() - t0:.1f} s here; the "
              f"record says {rec.get('seconds', 0):.1f} s in {n} process(es)) -> {run.dir}")
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

    if args.num_classes is not None and not 1 <= args.num_classes <= 254:
        return _fail(f"--num-classes must be in 1..254, got {args.num_classes}")
    num_classes = args.num_classes or len(read_class_names(args.root))
    # per-image arrays: the split may mix image sizes (PASCAL VOC does)
    arrays = load_split_arrays(args.root, args.split, stack=False, num_classes=num_classes)
    stats = dataset_statistics(arrays, num_classes)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for k, v in stats.items():
            print(f"{k:<22} {v:.4f}" if isinstance(v, float) else f"{k:<22} {v}")
    return 0


def _cmd_saliency(args) -> int:
    from nsrom_lib.data.saliency import write_saliency_maps

    summary = write_saliency_maps(args.images, args.out, method=args.method,
                                  list_file=args.list, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    ms = summary["ms_per_image"]
    speed = f", {ms:.1f} ms per map" if ms is not None else ""
    print(f"saliency ({summary['method']}): {summary['written']} map(s) written, "
          f"{summary['skipped']} skipped (already there) -> {summary['out_dir']} "
          f"({summary['seconds']:.1f} s{speed})")
    return 0


def _cmd_saliency_eval(args) -> int:
    methods = args.method or (["dataset"] if args.maps else ["ft", "spectral", "dataset"])
    bad = [m for m in methods if m not in ("ft", "spectral", "dataset")]
    if bad:
        return _fail(f"--method {bad[0]}: choose ft, spectral or dataset (repeatable)")
    if not 0 <= args.threshold <= 255:
        return _fail(f"--threshold must be in 0..255 (maps are 8-bit), got {args.threshold}")
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be >= 1, got {args.limit}")
    from nsrom_lib.data.saliency import evaluate_saliency, format_saliency_eval

    common = dict(split=args.split, limit=args.limit, threshold=args.threshold)
    results = [evaluate_saliency(args.root, method=None if m == "dataset" else m, **common)
               for m in methods]
    results += [evaluate_saliency(args.root, maps_dir=d, **common) for d in args.maps]
    for r in results:
        r.pop("per_image")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"Saliency against the instances of {args.root}, split {args.split}, "
          f"{results[0]['images']} images, threshold {args.threshold}: an instance is found "
          "when at least half of its pixels are at or above it; every rate a fraction")
    print(format_saliency_eval(results))
    return 0


def _label_option_problem(args) -> str | None:
    """A message for the first out-of-range `labels` option, or None (checked before any file)."""
    import math

    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if not 1 <= args.num_classes <= 254:
        return (f"--num-classes must be in 1..254 (label PNGs are 8-bit), got {args.num_classes}; "
                "PASCAL VOC has 20")
    if args.threads < 0:
        return f"--threads must be >= 0 (0: torch's default), got {args.threads}"
    if args.workers is not None and args.workers < 1:
        return f"--workers must be >= 1, got {args.workers}"
    # the ranges of nsrom_lib.params, the ones the run configuration checks too
    options = [("--min-ratio", args.min_ratio, RuleParams, "ratio")]
    if args.labels_command == "masked":
        options += [("--kernel", args.kernel, NSRMParams, "kernel")]
    else:
        options += [("--fg", args.fg, BEParams, "fg"), ("--conflict", args.conflict, BEParams,
                     "conflict"), ("--att", args.att, BEParams, "att"),
                    ("--pom", args.pom, POMParams, "pom"), ("--bg", args.bg, BEParams, "bg")]
    for flag, value, params, name in options:
        lo, hi = bounds(params, name)
        if math.isnan(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                return f"{flag} must be >= {lo:g}, got {value}"
            return f"{flag} must be in {lo:g}..{hi:g}, got {value}"
    return None


def _cmd_labels(args) -> int:
    from nsrom_lib.label_folders import warm_up, worker_pool  # no torch: the workers load it

    problem = _label_option_problem(args)
    if problem:
        return _fail(problem)
    pool = None
    if args.device in ("auto", "cpu"):
        if args.workers != 1:
            # worker processes, started before anything else so that they load torch while
            # this process checks the inputs (a GPU, if "auto" finds one, computes here)
            pool = worker_pool(args.workers, args.threads or None)
        if pool is None:
            warm_up()
    else:  # a device string to check before any file is read
        from nsrom_lib.device import resolve_device

        try:
            resolve_device(args.device)
        except RuntimeError as e:
            return _fail(f"--device {args.device}: {e}")
    with pool or contextlib.nullcontext():
        return _labels_with(args, pool)


def _labels_with(args, pool) -> int:
    """`labels pseudo|masked` once the workers (or the warm-up) are started."""
    from nsrom_lib.data.maps_io import load_label_inputs
    from nsrom_lib.label_folders import make_labels

    common = dict(num_classes=args.num_classes, strict=args.strict, progress=not args.quiet)
    t0 = time.perf_counter()
    if args.labels_command == "pseudo":
        inputs = load_label_inputs(args.list, args.saliency, oacam_dir=args.oacam,
                                   cam_dir=args.cam, **common)
        params = dict(fg=args.fg, conflict=args.conflict, bg=args.bg, att=args.att,
                      pom=args.pom, ratio=args.min_ratio)
    else:
        inputs = load_label_inputs(args.list, args.saliency, pred_dir=args.pred,
                                   pseudo_dir=args.pseudo, **common)
        params = dict(kernel=args.kernel, ratio=args.min_ratio)
    check_seconds = time.perf_counter() - t0
    summary = make_labels(inputs, args.out, batch_size=args.batch_size, device=args.device,
                          threads=args.threads or None, workers=args.workers,
                          progress=not args.quiet, pool=pool, **params)
    summary["check_seconds"] = check_seconds
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    sizes = ", ".join(f"{k} x{n}" for k, n in summary["sizes"].items())
    kind = "worker processes" if summary["processes"] else "workers"
    print(f"{summary['mode']} labels: {summary['images']} images written to {summary['out_dir']}")
    print(f"  ignore pixels     {100 * summary['ignore_share']:.1f}%")
    print(f"  time              {summary['seconds']:.2f} s ({summary['images_per_s']:.1f} images/s, "
          f"{summary['device']}, {summary['workers']} {kind}), after {check_seconds:.2f} s "
          "checking the inputs")
    print(f"  image sizes       {sizes}")
    if summary["missing_maps"]:
        print(f"  missing maps      {summary['missing_maps']} (treated as constant maps)")
    return 0


def _cmd_compare(args) -> int:
    from nsrom_lib.compare import compare_runs, compare_table

    summary = compare_runs(args.run_dirs)
    print(json.dumps(summary, indent=2) if args.json else compare_table(summary))
    return 0


def _cmd_bench(args) -> int:
    if args.bench_command is None:
        from nsrom_lib.bench_run import bench_all, format_bench_all

        result = bench_all(profile=args.profile, device=args.device, limit=args.limit,
                           label_limit=args.label_limit, run_dir=args.run_dir)
        print(json.dumps(result, indent=2) if args.json else format_bench_all(result))
        return 0
    if args.bench_command == "precision":
        from nsrom_lib.bench_run import bench_precision, format_bench_precision

        if args.limit < 1 or args.repeats < 1:
            return _fail(f"bench precision: --limit {args.limit} --repeats {args.repeats}: "
                         "use at least 1 for both (e.g. --limit 256 --repeats 3)")
        result = bench_precision(profile=args.profile, limit=args.limit, repeats=args.repeats)
        print(json.dumps(result, indent=2) if args.json else format_bench_precision(result))
        return 0
    if args.bench_command == "memory":
        from nsrom_lib.bench_memory import bench_memory, format_bench_memory

        try:
            sizes = tuple(int(x) for x in args.images.split(","))
        except ValueError:
            return _fail(f"bench memory: --images {args.images!r}: give split sizes, e.g. 500,2000")
        if not sizes or min(sizes) < 1 or args.val < 1:
            return _fail("bench memory: --images and --val must be at least 1")
        result = bench_memory(sizes, out=args.out, n_val=args.val)
        print(json.dumps(result, indent=2) if args.json else format_bench_memory(result))
        return 0
    if args.bench_command == "cost":
        from nsrom_lib.bench_cost import bench_cost, format_bench_cost

        if args.cpu_steps < 0:
            return _fail(f"bench cost: --cpu-steps {args.cpu_steps}: use 0 (no CPU measurement) "
                         "or more, e.g. --cpu-steps 3")
        result = bench_cost(profile=args.profile, gpu=args.gpu, cpu_steps=args.cpu_steps)
        print(json.dumps(result, indent=2) if args.json else format_bench_cost(result))
        return 0
    from nsrom_lib.bench import bench_labels, format_bench

    result = bench_labels(run_dir=args.run_dir, profile=args.profile, device=args.device,
                          batch_size=args.batch_size, limit=args.limit, repeats=args.repeats,
                          threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _fail(message: str, status: int = 2) -> int:
    """Print `message` as one `nsrom: error: ...` line on stderr; return the exit status."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    for line in lines[1:]:  # a listed message ("...:\n  a\n  b") becomes "...: a; b"
        text += (" " if text.endswith(":") else "; ") + line
    print(f"nsrom: error: {text}", file=sys.stderr)
    return status


def _dispatch(args) -> int:
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "results":
        return _cmd_results(args)
    if args.command == "stage":
        return _cmd_stage(args)
    if args.command == "data" and args.data_command == "synthvoc":
        return _cmd_synthvoc(args)
    if args.command == "data" and args.data_command == "stats":
        return _cmd_stats(args)
    if args.command == "data" and args.data_command == "saliency":
        return _cmd_saliency(args)
    if args.command == "data" and args.data_command == "saliency-eval":
        return _cmd_saliency_eval(args)
    if args.command == "labels":
        return _cmd_labels(args)
    if args.command == "bench":
        return _cmd_bench(args)
    if args.command == "compare":
        return _cmd_compare(args)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors (bad input or configuration, a missing file, a missing
    device, Ctrl-C) print one line and exit 2 (130 for Ctrl-C); a failed write exits 1; any
    other exception keeps its traceback. `--debug` shows the traceback of every error."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nsrom_lib.config import ConfigError
    from nsrom_lib.data.io import WriteError

    try:
        return _dispatch(args)
    except BrokenPipeError:  # the reader left early (`nsrom compare ... | head`): not a failure
        # stdout -> devnull, so that the interpreter's last flush does not fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail("interrupted; the stages that finished are kept (a label folder is written "
                     "whole or not at all): run the same command again to go on", 130)
    except OSError as e:
        if args.debug:
            raise
        if isinstance(e, FileNotFoundError | PermissionError) and not isinstance(e, WriteError):
            return _fail(str(e))  # a missing or unreadable input
        return _fail(str(e), 1)  # a failed write (disk full, read-only, a file in the way)
    except (ConfigError, ValueError, RuntimeError) as e:  # DataError is a ValueError
        if args.debug:
            raise
        return _fail(str(e))


if __name__ == "__main__":
    raise SystemExit(main())
