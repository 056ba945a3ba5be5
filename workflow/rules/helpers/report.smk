# Helpers of report.smk, included at its top (functions and settings only):
# the rows and files of each table and figure, and the settings they read from report.*.
from snakemake.exceptions import WorkflowError

from distalign.core.config import figure_dataset_errors, share_class_of
from distalign.report.tables import report_config

REPORT = config["report"]
# The part of the config the table and figure scripts read (a param: a change there reruns the report)
REPORT_CONFIG = report_config(config)


def _ordered(names):
    """Run datasets in the order of config["datasets"] (the paper's column order)."""
    return [d for d in config["datasets"] if d in names]


def artefact_keys(methods, task="attribute", datasets=None, weights=False):
    """(dataset, model, method, task) of every applicable combination for one artefact (``weights``:
    an artefact that reads the model's logits, such as the probe, leaves API models out)."""
    keys = []
    for dataset in _ordered(datasets or config["run"]["datasets"]):
        for model in config["run"]["models"]:
            if weights and is_api_model(config, model):
                continue
            for method in methods:
                if applicable(dataset, method, task, model):
                    keys.append(dict(dataset=dataset, model=model, method=method, task=task))
    return keys


def artefact_metrics(methods, task="attribute", datasets=None):
    return [METRICS.format(**k) for k in artefact_keys(methods, task, datasets)]


def artefact_probes(methods):
    return [PROBE.format(**k) for k in artefact_keys(methods, weights=True)]


def share_figure_keys(fig):
    """Input, records and title of fig3/fig11 (report.<fig>_dataset), as functions: evaluated when the figure
    is needed, so that a bad dataset or share class stops the run at DAG time, naming the key."""

    def keys():
        errs = figure_dataset_errors(config, fig)
        if errs:
            raise WorkflowError(f"cannot draw {fig}: {'; '.join(errs)}")
        return artefact_keys(TABLE1_METHODS, datasets=[REPORT[f"{fig}_dataset"]])

    def title(wildcards):
        dataset = REPORT[f"{fig}_dataset"]
        attribute = config["datasets"][dataset]["attribute"]
        share = share_class_of(REPORT, attribute, config["attributes"][attribute])
        return f"Share of {share} per occupation ({dataset})"

    return {
        "metrics": lambda wildcards: [METRICS.format(**k) for k in keys()],
        "records": lambda wildcards: keys(),
        "title": title,
    }


def table_outputs(name):
    stem = TABLE.format(table=name)
    return {
        "csv": report(f"{stem}.csv", caption=f"../report/{name}.rst", category="Tables"),
        "md": f"{stem}.md",
    }


def figure_outputs(name):
    stem = FIGURE.format(figure=name)
    return {
        "png": report(f"{stem}.png", caption=f"../report/{name}.rst", category="Figures"),
        "pdf": f"{stem}.pdf",
    }


TABLE1_METHODS = REPORT["table1_methods"]
TRANSFER_DATASETS = REPORT["transfer_datasets"]
STEERING_METHODS = [m for m in TABLE1_METHODS if method_kind(m) == "ours"]
STORY_DATASETS = [d for d in config["run"]["datasets"] if config["datasets"][d]["attribute"] != "race"]


def steering_diagnosis_keys():
    """The steering methods of table 1 on every task of the run (stories on the story datasets)."""
    keys = []
    for task in config["run"]["tasks"]:
        keys += artefact_keys(STEERING_METHODS, task, STORY_DATASETS if task == "story" else None)
    return keys


def steering_diagnosis_metrics():
    return [METRICS.format(**k) for k in steering_diagnosis_keys()]


def steering_diagnosis_story_data():
    """(dataset, model) of the story rows trained on D_story: its summary gives their hint reach."""
    pairs = {
        (k["dataset"], k["model"]): None
        for k in steering_diagnosis_keys()
        if k["task"] == "story" and config["methods"][k["method"]].get("story_data")
    }
    return [dict(dataset=d, model=m) for d, m in pairs]


def steering_diagnosis_story_summaries():
    return [STORY_SUMMARY.format(**k) for k in steering_diagnosis_story_data()]


# The story datasets of the run whose attribute has a judge check: the rows of the judge_check table.
JUDGE_CHECK_DATASETS = [
    d for d in STORY_DATASETS if config["attributes"][config["datasets"][d]["attribute"]].get("judge_check")
]


def judge_check_files():
    return [JUDGE_CHECK.format(dataset=d) for d in JUDGE_CHECK_DATASETS]


def mae_table_inputs(spec):
    """The probe files (kind probe) or the metrics files of a table's rows."""
    task, datasets = spec.get("task", "attribute"), spec.get("datasets")
    if spec["kind"] == "probe":
        return {"probes": [PROBE.format(**k) for k in artefact_keys(spec["methods"], task, datasets, True)]}
    return {"metrics": artefact_metrics(spec["methods"], task, datasets)}


def mae_table_params(spec):
    """What scripts/table.py reads, in the order and with the values each table rule always had (a
    params change would rerun the table): `task` only where it is not the attribute task."""
    task, datasets = spec.get("task", "attribute"), spec.get("datasets")
    params = {"kind": spec["kind"]}
    if "task" in spec:
        params["task"] = task
    params["records"] = artefact_keys(spec["methods"], task, datasets, spec["kind"] == "probe")
    params["datasets"] = _ordered(config["run"]["datasets"] if datasets is None else datasets)
    params["methods"] = spec["methods"]
    params["title"] = spec["title"]
    params["report_config"] = REPORT_CONFIG
    return params
