"""Rule story_data: D_story, hinted stories of the base model kept when the story judge agrees."""

import json

from distalign.attributes import Attribute
from distalign.generate import generate
from distalign.io import read_jsonl, write_json, write_jsonl
from distalign.judge import offline_story_judge
from distalign.scripting import setup_logging
from distalign.stories import select_stories, story_requests
from distalign.targets import read_targets_csv

log = setup_logging(snakemake.log[0])
w = snakemake.wildcards
params = snakemake.params
attr_spec = dict(params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
story_cfg = dict(params.story_data)
requests = story_requests(read_jsonl(snakemake.input.prompts), read_targets_csv(snakemake.input.targets, attribute),
                          attribute, params.hints, int(story_cfg["per_context"]), float(story_cfg["oversample"]),
                          params.seed)
# The candidates are written by the base model as a prompting method of its own name (its seeds
# differ from every evaluated method's).
config = json.loads(json.dumps(snakemake.config))
config["seed"] = params.seed
config["generation"].update(dict(params.generation))
config["methods"]["story-data"] = {"kind": "prompt", "prompt_style": "plain"}
log.info("%s/%s: %d candidate stories (%s per context, oversample %s)", w.dataset, w.model, len(requests),
         story_cfg["per_context"], story_cfg["oversample"])
generations = generate(requests, config=config, dataset=w.dataset, model=w.model, method="story-data", task="story",
                       model_dir=snakemake.input.model, threads=snakemake.threads)
judge = offline_story_judge(attribute)
stories = [g["response"] for g in generations]
judged = [j.label for j in judge.judge(stories)]
rows, summary = select_stories(requests, stories, judged, attribute)
summary.update({"dataset": w.dataset, "model": w.model, "judge": judge.name, "story_data": story_cfg})
for name, c in summary["per_class"].items():
    log.info("class %s: wanted %d, generated %d, judged as hinted %d, kept %d", name, c["wanted"], c["generated"],
             c["consistent"], c["kept"])
if summary["missing"]:
    log.warning("no story kept for %d (context, class) pairs that need one: %s", len(summary["missing"]),
                summary["missing"][:10])
write_json(snakemake.output.summary, summary)
write_jsonl(snakemake.output.stories, rows)
log.info("wrote %d stories to %s", len(rows), snakemake.output.stories)
