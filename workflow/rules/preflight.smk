# Pre-flight checks: bad input that only the model or an endpoint can reveal fails here, in seconds,
# before the expensive job that would trip over it (distalign.modeling.preflight; config/README.md "Pre-flight checks").
# Its input functions (helpers/preflight.smk) give each consumer its own marker.
#
# Every expensive job (train, generate, validity_generate, sweep_generate, story_data, capabilities)
# reads its own marker results/preflight/models/{model}/{job}.json; label jobs that call the story LLM
# judge and prompts jobs that call the paraphraser read results/preflight/endpoints/{job}.json.
# The markers are temp(): made when their consumer has to run, deleted when it is done, so a finished
# job never reruns because of them. One marker per consumer job, never shared: when one reader of a
# shared marker reruns, Snakemake remakes the marker and reruns every other reader.
#
# Keep these rules without params and with the input they have: Snakemake keeps the metadata of a
# deleted marker, and a params or input change here would rerun every job that reads a marker.
# The checks read the config inside the job instead. (With --sdm conda, an edit of their env file
# reruns every job that reads a marker once, for the same reason.)


include: "helpers/preflight.smk"


# The model checks of one consumer job: steering tokens, LoRA target modules and device of the run's
# methods (and the job's own), and the story judge when the run labels stories.
rule preflight:
    input:
        model=MODEL,
    output:
        marker=temp(PREFLIGHT),
    log:
        f"{LOGS}/preflight/models/{{model}}/{{job}}.log",
    wildcard_constraints:
        job=r"[a-z_]+(/[^/]+)*",
    priority: 100
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
        cuda_here=preflight_cuda_here,
    script:
        "../scripts/preflight.py"


# The endpoint checks of one label or prompts job: key variable set and non-empty, URL reachable,
# GET /v1/models lists the configured model.
rule preflight_endpoints:
    output:
        marker=temp(PREFLIGHT_ENDPOINTS),
    log:
        f"{LOGS}/preflight/endpoints/{{job}}.log",
    wildcard_constraints:
        job=r"[a-z_]+(/[^/]+)*",
    priority: 100
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/preflight.py"


# Seconds of work: on a cluster they run on the submit host, like the other cheap rules (cluster.smk).
if config["cluster"]["local_rules"]:

    localrules:
        preflight,
        preflight_endpoints,
