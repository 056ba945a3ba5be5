"""A stand-in Hugging Face Hub for the rehearsal (config/rehearsal.yaml): serves a tiny ``allenai/ai2_arc``
(config ARC-Easy, the dataset of lm-eval's standard ``arc_easy`` task) so that ``snakemake prefetch_models``
downloads it into hf.home as it would on a login node, with no internet. The endpoints are those of
tests/test_lm_eval_prefetch.py's fake hub (the handler is reused).

    python tests/rehearsal_hub.py PORT_FILE     # writes http://127.0.0.1:<port> to PORT_FILE, serves until killed

Why a stand-in and not a local task only: the issue asks for one *standard* lm-eval task whose dataset goes
through the login-node prefetch and is read offline by the capabilities job.
"""

from __future__ import annotations

import json
import sys
import tempfile
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lm_eval_prefetch import _Hub  # noqa: E402

README = """---
configs:
- config_name: ARC-Easy
  data_files:
  - {split: train, path: ARC-Easy/train.jsonl}
  - {split: validation, path: ARC-Easy/validation.jsonl}
  - {split: test, path: ARC-Easy/test.jsonl}
---
Three questions per split in the ai2_arc format, for the distalign rehearsal.
"""

QUESTIONS = [
    ("Which gas do plants take in for photosynthesis?", ["oxygen", "carbon dioxide", "helium", "neon"], "B"),
    ("What is frozen water called?", ["steam", "ice", "sand", "salt"], "B"),
    (
        "Which object is a magnet most likely to pull?",
        ["a paper clip", "a rubber band", "a wooden spoon", "a glass cup"],
        "A",
    ),
]


def make_repo(root: Path) -> Path:
    repo = root / "allenai" / "ai2_arc"
    (repo / "ARC-Easy").mkdir(parents=True)
    (repo / "README.md").write_text(README)
    for split in ("train", "validation", "test"):
        rows = [
            {
                "id": f"{split}-{i}",
                "question": q,
                "choices": {"text": c, "label": list("ABCD")},
                "answerKey": a,
            }
            for i, (q, c, a) in enumerate(QUESTIONS)
        ]
        (repo / "ARC-Easy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def main(port_file: str) -> None:
    root = make_repo(Path(tempfile.mkdtemp(prefix="rehearsal-hub-")))
    handler = type("Hub", (_Hub,), {"root": root, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Path(port_file).write_text(f"http://127.0.0.1:{server.server_address[1]}\n")
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
