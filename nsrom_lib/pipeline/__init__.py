"""Runs and stages: a run folder whose stages each compute once and are reused after.

docs/design.md, "Runs, profiles and devices" and "Module map". The package is split by idea,
each module importing only those below it:

    device      (nsrom_lib.device, a leaf below the package) where a run computes: torch
                device, the machine a record names
    run         the run folder: configuration, stage keys, records, `Run.ensure`
    stages/     one module per stage family: data, classifier (classifier, iam, maps), pseudo,
                segmentation (seg1, masked, seg2), results; shared helpers in stages/common
    report      tables, the ablation figure and `report.md` (the only module that draws)
    notebooks   executing the numbered notebooks with papermill

Every public name is re-exported here, so `from nsrom_lib.pipeline import open_run,
ensure_classifier` works as before the split.
"""

from nsrom_lib.device import cpu_model, describe_machine, machine_info, resolve_device
from nsrom_lib.pipeline.notebooks import (
    WIDGET_MIME,
    execute_notebook,
    list_notebooks,
    run_notebooks,
    widget_outputs,
)
from nsrom_lib.pipeline.report import (
    ensure_results,
    ensure_seed_results,
    gap_table,
    label_table,
    load_results,
    results_table,
    seeds_figure,
    stage_machines,
    stage_status,
    stage_times,
    write_report,
)
from nsrom_lib.pipeline.run import (
    SEG_PREDICT_FIELDS,
    STAGE_FIELDS,
    STAGES,
    UPPER_BOUND_FIELDS,
    WARMUP_STAGE,
    Run,
    dataset_id,
    default_data_dir,
    default_runs_dir,
    open_run,
    project_root,
    reopen_run,
    synthvoc_config_for,
    variant_stage,
)
from nsrom_lib.pipeline.stages.classifier import (
    MAP_KINDS,
    OAA_PROBE_IMAGES,
    build_classifier,
    ensure_classifier,
    ensure_iam,
    ensure_maps,
    ensure_warmup,
    load_accumulated,
    load_classifier,
    load_iam,
    load_map_dicts,
    load_maps,
    load_oaa_snapshots,
    map_path,
    snapshot_indices,
    warm_start,
)
from nsrom_lib.pipeline.stages.common import load_ground_truth
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.pipeline.stages.pseudo import (
    PSEUDO_KINDS,
    PSEUDO_SOURCES,
    ensure_pseudo,
    load_explorer_inputs,
    load_labels,
    pseudo_stage,
    pseudo_thresholds,
)
from nsrom_lib.pipeline.stages.results import (
    GAP_ROWS,
    LABEL_ROWS,
    LABEL_TITLES,
    LATER_ROWS,
    RESULT_ROWS,
    TARGETS,
    compute_results,
    gap_measures,
    read_metrics,
    results_checks,
    stored_checks,
)
from nsrom_lib.pipeline.stages.segmentation import (
    SEG_MODELS,
    build_segmenter,
    ensure_masked,
    ensure_segmentation,
    load_masked,
    load_predictions,
    load_segmenter,
    nsrm_kernel_for,
    segmentation_key,
)

__all__ = [
    "STAGES", "STAGE_FIELDS", "UPPER_BOUND_FIELDS", "SEG_PREDICT_FIELDS", "WARMUP_STAGE", "Run",
    "open_run", "project_root", "default_data_dir", "default_runs_dir", "dataset_id",
    "synthvoc_config_for", "variant_stage", "reopen_run",
    "resolve_device", "cpu_model", "machine_info", "describe_machine",
    "ensure_data",
    "build_classifier", "snapshot_indices", "ensure_warmup", "warm_start", "ensure_classifier",
    "OAA_PROBE_IMAGES", "ensure_iam", "ensure_maps", "load_classifier", "load_iam",
    "load_accumulated", "load_oaa_snapshots", "MAP_KINDS", "map_path", "load_map_dicts",
    "load_maps", "load_ground_truth",
    "PSEUDO_KINDS", "PSEUDO_SOURCES", "pseudo_stage", "pseudo_thresholds", "ensure_pseudo", "load_labels", "load_explorer_inputs",
    "SEG_MODELS", "nsrm_kernel_for", "build_segmenter", "segmentation_key",
    "ensure_segmentation", "load_segmenter", "load_predictions", "ensure_masked", "load_masked",
    "RESULT_ROWS", "LABEL_ROWS", "LABEL_TITLES", "LATER_ROWS", "GAP_ROWS", "TARGETS",
    "results_checks",
    "stored_checks", "compute_results", "gap_measures", "read_metrics",
    "ensure_results", "ensure_seed_results", "seeds_figure", "load_results", "results_table",
    "label_table", "gap_table", "stage_times", "stage_machines", "write_report", "stage_status",
    "list_notebooks", "WIDGET_MIME", "execute_notebook", "widget_outputs", "run_notebooks",
]
