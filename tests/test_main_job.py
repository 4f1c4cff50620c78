"""The README's main job: ``llava-grounding`` exported routed, asked about the example picture through
ONNX Runtime, answers with the right box (issue 14: a fresh clone shows a routed, exported model answering
a question about an image correctly)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from exporter.cli import main
from exporter.evaluation.scoring import iou, parse_box

ROOT = Path(__file__).resolve().parent.parent
# the green triangle of assets/grounding_example.png (scripts/make_example_image.py prints every box)
EXPECTED_BOX = (0.81, 0.33, 0.95, 0.46)


def readme_main_job() -> list[list[str]]:
    """The README's main-job command line, split into its ``reroute`` commands' arguments."""
    block = (ROOT / "README.md").read_text().split("**Run the main job")[1].split("```bash\n")[1].split("```")[0]
    commands = [shlex.split(part) for part in block.strip().split(" && ")]
    return [c[1:] for c in commands if c[0].endswith("reroute")]


def test_readme_main_job_answers_the_grounding_question(capsys, tmp_path):
    export, generate = readme_main_job()
    assert export[:3] == ["export", "--model", "llava-grounding"]
    out = tmp_path / "artifact"
    export = [str(out) if a == export[export.index("--out") + 1] else a for a in export]
    assert main([*export, "--parity-samples", "0", "--quiet"]) == 0  # the README's job checks parity too
    assert main(["verify", str(out)]) == 0  # the artifact holds the trained weights, not the seeded ones
    generate = [str(out) if a == generate[generate.index("--artifact") + 1] else a for a in generate]
    generate = [str(ROOT / a) if a.startswith("assets/") else a for a in generate]
    capsys.readouterr()
    assert main(generate) == 0
    answer = json.loads(capsys.readouterr().out)["text"]
    assert re.fullmatch(r"\s*\[[0-9., ]+\]\s*", answer), answer
    assert iou(parse_box(answer), EXPECTED_BOX) >= 0.5, answer
