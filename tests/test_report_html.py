"""The captions of the HTML report (workflow/report/*.rst) render without a docutils problem.

`snakemake --report` renders each caption as a Jinja2 template (``snakemake.config`` and the job's params
and wildcards) and then as reStructuredText. docutils does not fail on bad markup: it writes a red "System
Message" box into the caption (``|p_hat_k - p*_k|`` was read as an undefined substitution), so the report
looks fine until someone reads it. These tests render the captions here, for every shipped config, in
milliseconds; tests/test_workflow_dag.py builds the real report of the tiny run and checks it with
`report_captions` and `docutils_problems` below.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = sorted((REPO / "workflow" / "report").glob("*.rst"))

# How docutils marks a problem in its HTML output and on its warning stream.
DOCUTILS_MARKERS = (
    "System Message",
    "system-message",
    "Undefined substitution",
    "(INFO/1)",
    "(WARNING/2)",
    "(ERROR/3)",
    "(SEVERE/4)",
)


def report_captions(html: str) -> list[str]:
    """The rendered captions and workflow description of a Snakemake 9 report.

    The self-contained HTML embeds them as JSON string literals (``"caption": "<p>..."`` in the results
    data, ``var workflow_desc = "..."``), with quotes and non-ASCII characters escaped: decoded here so that
    a marker is found however it was escaped."""
    decoder = json.JSONDecoder()
    out = []
    for match in re.finditer(r'"caption":\s*(?=")|var workflow_desc\s*=\s*(?=")', html):
        text, _ = decoder.raw_decode(html, match.end())
        out.append(text)
    return out


def docutils_problems(texts) -> list[str]:
    """Each text (a rendered caption, or docutils' warning output) that carries a docutils marker, cut short."""
    return [text[:300] for text in texts if any(marker in text for marker in DOCUTILS_MARKERS)]


def render_caption(path: Path, config: dict) -> tuple[str, str]:
    """A caption as `snakemake --report` renders it (Jinja2, then docutils HTML): (body, docutils warnings).

    StrictUndefined: a misspelt config key fails here, where Snakemake would render it as empty text."""
    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    rst = env.from_string(path.read_text()).render(
        snakemake=SimpleNamespace(config=config, params={}, wildcards={})
    )
    warnings = io.StringIO()
    body = publish_parts(
        rst, writer="html", settings_overrides={"warning_stream": warnings, "report_level": 1}
    )["body"]
    return body, warnings.getvalue()


@pytest.fixture(
    scope="module", params=[("config.yaml",), ("config.yaml", "paper.yaml")], ids=["default", "paper"]
)
def shipped_config(request):
    from distalign.core.config import load_config

    return load_config(*(REPO / "config" / name for name in request.param))


@pytest.mark.parametrize("caption", CAPTIONS, ids=[p.stem for p in CAPTIONS])
def test_caption_renders_without_docutils_problem(caption, shipped_config):
    body, warnings = render_caption(caption, shipped_config)
    assert not warnings, f"{caption.relative_to(REPO)}: {warnings}"
    assert not docutils_problems([body]), f"{caption.relative_to(REPO)}: {body[:500]}"


def test_caption_numbers_follow_the_config():
    """table1's N, table11's resamples and fig4's runs are the config's, not numbers written into the text."""
    from distalign.core.config import load_config

    config = load_config(
        REPO / "config" / "config.yaml",
        overrides={
            "prompts": {"per_split": {"test": 7}},
            "generation": {"samples_per_prompt": 3},
            "metrics": {"bootstrap": 2500, "two_level": True},
            "sweeps": {"seeds": 4},
        },
    )
    report = REPO / "workflow" / "report"
    assert "N = 21 answers per context" in render_caption(report / "table1.rst", config)[0]
    table11 = render_caption(report / "table11.rst", config)[0]
    assert "2,500 resamples" in table11 and "the contexts, then" in table11
    assert "mean over 4 seeded runs" in render_caption(report / "fig4.rst", config)[0]


def test_docutils_problems_finds_an_undefined_substitution():
    """The check the report tests rely on sees the problem this file exists for, escaped as in the HTML."""
    from docutils.core import publish_parts

    bad = publish_parts(
        "MAE = (1/K) sum_k |p_hat_k - p*_k|",
        writer="html",
        settings_overrides={"warning_stream": io.StringIO()},
    )["body"]
    html = f'<script>var data = {{"caption": {json.dumps(bad)}, "size": "1 KB"}};</script>'
    assert report_captions(html) == [bad]
    assert docutils_problems(report_captions(html))
    assert not docutils_problems(report_captions(html.replace(json.dumps(bad), json.dumps("<p>fine</p>"))))
