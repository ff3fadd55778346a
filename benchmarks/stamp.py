"""The denormals line every benchmark result file carries (issue 22 item 4).

A denormal float costs up to ~100x per operation on x86, so a run whose activations or gradients decay into
that range slows several-fold midway (a BPTT run here went from 0.52 to 1.87 s/step), and every clock-based
comparison with it. The trainers flush them (`models.device.pick_device`); each benchmark's main also flushes
them itself before anything runs and then stamps its result files with `stamp(stem, flushed)`: a line under
the Markdown title and a `denormals_flushed` field in the JSON. Files written before the flush existed carry
"no" (`python benchmarks/stamp.py FILE.md ...`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.device import flush_denormals

PREFIX = "Denormals flushed:"


def line(flushed: bool | None) -> str:
    if flushed is None:
        return f"{PREFIX} no (this run predates the flush of issue 22; its clock may include denormal slow-downs)."
    return f"{PREFIX} {'yes' if flushed else 'no (this CPU cannot flush them)'}."


def start() -> bool:
    """Flush denormals for this process (and the trainers it calls); True when they are flushed."""
    return flush_denormals()


def stamp(stem: str | Path, flushed: bool | None) -> None:
    """Put the line into STEM.md (under its title, replacing an older one) and the field into STEM.json."""
    stem = Path(stem)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    if md.exists():
        lines = [x for x in md.read_text().split("\n") if not x.startswith(PREFIX)]
        at = 1 if lines and lines[0].startswith("#") else 0
        md.write_text("\n".join(lines[:at] + ["", line(flushed)] + lines[at:]).replace("\n\n\n", "\n\n"))
    if js.exists():
        data = json.loads(js.read_text())
        if isinstance(data, dict):
            js.write_text(json.dumps({"denormals_flushed": flushed if flushed is not None else False, **{
                k: v for k, v in data.items() if k != "denormals_flushed"}}, indent=1))


if __name__ == "__main__":  # mark result files written before the flush
    for f in sys.argv[1:]:
        stamp(Path(f).with_suffix(""), None)
