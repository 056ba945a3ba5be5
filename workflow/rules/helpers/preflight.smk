# Helpers of preflight.smk, included at its top (functions and settings only):
# the marker input functions of every consumer job (data, train, generate, evaluate, sweep).
from distalign.modeling.preflight import job_endpoints, job_name


def preflight_marker(kind):
    """Input function for the jobs of `kind` that load the model -- its pre-flight marker (model checks,
    and the story judge when the run labels stories)."""

    def marker(wildcards):
        return PREFLIGHT.format(model=wildcards.model, job=job_name(kind, wildcards, skip=("model",)))

    return marker


def preflight_endpoints_marker(kind):
    """Input function of a label or prompts job: its endpoint marker, or none when the job calls no
    endpoint (attribute labels, the offline paraphraser; their inputs stay as they were)."""

    def marker(wildcards):
        if not job_endpoints(config, kind, wildcards):
            return []
        return PREFLIGHT_ENDPOINTS.format(job=job_name(kind, wildcards))

    return marker


def preflight_cuda_here(wildcards):
    """1 when the pre-flight job runs on the machine of the job it checks (local execution), so that
    `device: cuda` is checked there; 0 under a cluster executor (the scheduler gives the job its GPU)."""
    return int(workflow.local_exec and not workflow.remote_exec)
