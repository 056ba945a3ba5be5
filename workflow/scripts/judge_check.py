"""Rule judge_check: the offline story judge against a person's labels, and the story MAE that costs."""

from distalign.core.attributes import Attribute
from distalign.core.io import write_json
from distalign.core.scripting import setup_logging
from distalign.data.targets import read_targets_csv
from distalign.evaluation.judge_check import judge_check, read_labelled_stories
from distalign.evaluation.judges import offline_story_judge

log = setup_logging(snakemake.log[0])
p = snakemake.params
attr_spec = dict(p.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
rows = read_labelled_stories(snakemake.input.stories, attribute)
targets = read_targets_csv(snakemake.input.targets, attribute)
out = judge_check(
    rows,
    attribute,
    offline_story_judge(attribute),
    targets,
    min_words=int(p.min_words),
    seed=int(p.seed),
    bootstrap=int(p.bootstrap),
)
out["dataset"] = snakemake.wildcards.dataset
out["stories"] = str(snakemake.input.stories)
write_json(snakemake.output.check, out)
low, high = out["faithful_mae_ci"]
log.info(
    "%s: %d stories, judge %s agrees with the reader on %.2f (kappa %s); confusion (reader x judge + invalid) "
    "%s; a generator writing the target's tones is scored at MAE %.3f [%s, %s]; the judge's reach %.3f",
    snakemake.input.stories,
    out["n_stories"],
    out["judge"],
    out["agreement"],
    out["kappa"],
    out["confusion"],
    out["faithful_mae"],
    low,
    high,
    out["judge_reach"],
)
