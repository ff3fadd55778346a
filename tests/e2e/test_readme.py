"""The README's "Commands" section runs as written, in order, on a tiny config: a documented sequence that
breaks fails here. The section's bash block becomes a script in which `smt <stage>` runs this checkout's
stage with size flags appended (last flag wins, so nothing the README sets is overridden except the time
budget of `smt bptt`), the corpus is a small one, BUCKET is a temporary folder and
BUCKET/targets/<fp>/<corpus-id> the target set that `smt label` wrote. Optional `[...]` parts are left out."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = ("retrieval:T=64,vocab=8", "retrieval:T=48,vocab=8,n=64")
TINY = {  # flags appended per stage: small models, batches and rollouts
    "pretrain": "--steps 40 --batch-size 16 --eval-every 20 --eval-size 16 --teacher.d-model 16 --teacher.n-heads 2 "
                "--teacher.mem-tokens 2 --teacher.encoder-depth 1 --teacher.decoder-depth 1 --device cpu --quiet",
    "label": "--shard-sequences 32 --batch-size 32 --device cpu --quiet",
    "train": "--stream.batch-size 32 --stream.shuffle-buffer 256 --updater.hidden 32 --device cpu --quiet",
    "dmt": "--sequences 16 --shard-sequences 16 --device cpu",
    "dmt-online": "--steps 10 --batch-size 8 --eval-every 10 --eval-size 16 --device cpu --quiet",
    "bptt": "--steps 20 --seconds 10 --batch-size 8 --eval-every 10 --eval-size 16 --device cpu --quiet",
    "eval": "--size 32",
    "pipeline": "--pretrain.steps 30 --pretrain.eval-every 15 --student.steps 20 --dmt.rounds 2 --quiet",
}


def commands_block(readme: str) -> str:
    """The first ```bash block after the '## Commands' heading."""
    section = readme.split("\n## Commands", 1)[1]
    m = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert m, "README: no ```bash block under '## Commands'"
    return m.group(1)


def to_script(block: str, bucket: str) -> str:
    """The block as a bash script for the tiny run (see the module docstring)."""
    body = re.sub(r"\s*\[--[^\]]*\]", "", block.replace("\\\n", " "))  # continuations; optional parts out
    body = body.replace("BUCKET/targets/<fp>/<corpus-id>", '"$(targets)"').replace("BUCKET", '"$BUCKET"')
    body = body.replace(CORPUS[0], CORPUS[1])
    tiny = "\n".join(f"    {stage}) extra='{flags}' ;;" for stage, flags in TINY.items())
    return f"""set -euo pipefail
BUCKET={bucket}
targets() {{ ls -d "$BUCKET"/targets/*/* | head -n 1; }}
smt() {{
  local stage=${{1:-}} extra=''
  case "$stage" in
{tiny}
  esac
  echo "+ smt $*" >&2
  if [ -z "$stage" ] || [ "$stage" = --help ]; then "{sys.executable}" -m jobs.cli "$@"; return; fi
  "{sys.executable}" -m jobs.cli "$@" $extra
}}
{body}
for job in $(jobs -p); do wait "$job"; done  # a background command that failed fails the script
"""


def test_readme_commands_become_a_script():
    """Fast guard: the block exists, names only real stages and every placeholder is substituted."""
    from jobs.cli import STAGES

    script = to_script(commands_block((REPO / "README.md").read_text()), "/tmp/b")
    stages = re.findall(r"(?:^|[&;]\s*)smt ([a-z-]+)", script, re.MULTILINE)
    assert stages and set(stages) <= set(STAGES) | {"--help"}, stages
    assert "<fp>" not in script and "<corpus-id>" not in script and CORPUS[0] not in script
    assert " ... " not in script, "README commands must be complete (no '...')"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_commands_run_in_order(tmp_path):
    script = to_script(commands_block((REPO / "README.md").read_text()), str(tmp_path / "bucket"))
    (tmp_path / "commands.sh").write_text(script)
    p = subprocess.run(["bash", str(tmp_path / "commands.sh")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=1700, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert p.returncode == 0, f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
