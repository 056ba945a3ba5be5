"""Rule story_data: D_story, hinted stories of the base model labelled by the story judge, in rounds
(the loop: ``distalign.data.stories.collect_stories``)."""

from distalign.core.attributes import Attribute
from distalign.core.config import GenerationSpec
from distalign.core.io import read_jsonl, write_json, write_jsonl
from distalign.core.scripting import operational, setup_logging
from distalign.data.stories import collect_stories
from distalign.data.targets import read_targets_csv
from distalign.evaluation.judges import offline_story_judge
from distalign.generation.runner import generate

log = setup_logging(snakemake.log[0])
w = snakemake.wildcards
params = snakemake.params
attr_spec = dict(params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
story_cfg = dict(params.story_data)
prompts = read_jsonl(snakemake.input.prompts)
targets = read_targets_csv(snakemake.input.targets, attribute)
# The candidates are written by the base model as a prompting method of its own name (its seeds
# differ from every evaluated method's).
spec = GenerationSpec.from_params(
    "story-data",
    {"kind": "prompt", "prompt_style": "plain"},
    params.generation,
    params.attribute,
    params.seed,
    device=operational(snakemake, "training.device"),
    vllm_python=operational(snakemake, "generation.vllm_python"),
)
judge = offline_story_judge(attribute)


def write(requests):
    generations = generate(
        requests,
        spec=spec,
        dataset=w.dataset,
        model=w.model,
        task="story",
        model_dir=snakemake.input.model,
        threads=snakemake.threads,
    )
    return [g["response"] for g in generations]


collector = collect_stories(
    prompts,
    targets,
    attribute,
    story_data=story_cfg,
    hints=params.hints,
    seed=params.seed,
    min_words=params.min_words,
    write=write,
    judge=lambda stories: [j.label for j in judge.judge(stories)],
    label=f"{w.dataset}/{w.model}",
)
summary = collector.summary()
summary.update(
    {
        "dataset": w.dataset,
        "model": w.model,
        "judge": judge.name,
        "story_data": story_cfg,
        "min_words": params.min_words,
    }
)
for name, c in summary["per_class"].items():
    log.info(
        "class %s: wanted %d, hinted %d, judged as hinted %d, kept %d (%d written under another hint)",
        name,
        c["wanted"],
        c["generated"],
        c["consistent"],
        c["kept"],
        c["kept_unhinted"],
    )
reach = summary["hint_reach"]
if reach is not None:
    log.info(
        "the hinted prompts reach MAE %.3f at best (per hint, classes of the valid stories: %s)",
        reach["mae"],
        {h: {c: round(v, 3) for c, v in d.items()} for h, d in reach["hint_distributions"].items()},
    )
if summary["missing"]:
    log.warning(
        "no story kept for %d (context, class) pairs that need one: %s",
        len(summary["missing"]),
        summary["missing"][:10],
    )
write_json(snakemake.output.summary, summary)
write_jsonl(snakemake.output.stories, collector.rows)
log.info("wrote %d stories to %s", len(collector.rows), snakemake.output.stories)
