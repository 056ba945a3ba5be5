# Helpers of sweep.smk, included at its top (functions and settings only):
# the points of a decoding sweep, their seeds and the files fig4 reads.
from distalign.report.figures import KNOBS
from distalign.report.tables import report_config
from distalign.core.seeds import derive_seed

SWEEPS = config["sweeps"]


def sweep_generation_settings(wildcards):
    """generation settings with the swept knob set to the point's value."""
    value = int(wildcards.value) if wildcards.knob == "top_k" else float(wildcards.value)
    return {**generation_settings(wildcards), wildcards.knob: value}


def sweep_seed(wildcards):
    """Run r of a sweep point samples with its own seed, derived from the master seed and r."""
    return derive_seed(config["seed"], "sweep", int(wildcards.rep)) % (2**31)


def _sweep_path_point(knob, value):
    """Where a point's samples live: a value equal to the generation default of its knob is the
    default sampling itself, shared by the three knobs (stored once, under top_p)."""
    if float(value) == float(config["generation"][knob]):
        return "top_p", str(config["generation"]["top_p"])
    return knob, str(value)


def sweep_keys(dataset):
    """(model, method, knob, value, rep) of every point of one dataset's decoding sweep, with the
    knob/value of the files it reads (``path_knob``/``path_value``)."""
    keys = []
    for model in config["run"]["models"]:
        for method in SWEEPS["methods"]:
            if not applicable(dataset, method, model=model):
                continue
            for knob in KNOBS:
                for value in SWEEPS[knob]:
                    path_knob, path_value = _sweep_path_point(knob, value)
                    for rep in range(SWEEPS["seeds"]):
                        keys.append(
                            dict(
                                dataset=dataset,
                                model=model,
                                method=method,
                                task="attribute",
                                knob=knob,
                                value=str(value),
                                rep=rep,
                                path_knob=path_knob,
                                path_value=path_value,
                            )
                        )
    return keys


def _sweep_file(key):
    return SWEEP_METRICS.format(**{**key, "knob": key["path_knob"], "value": key["path_value"]})


def sweep_records(wildcards):
    """Every plotted point with the metrics file it reads (shared default points appear once per knob)."""
    return [
        {**{k: v for k, v in key.items() if not k.startswith("path_")}, "path": _sweep_file(key)}
        for key in sweep_keys(wildcards.dataset)
    ]


def sweep_metrics(wildcards):
    return sorted({_sweep_file(k) for k in sweep_keys(wildcards.dataset)})
