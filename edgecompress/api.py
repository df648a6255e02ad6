"""The Python face of `compress`, for people who script Ultralytics:

    from edgecompress import compress
    report = compress("best.pt", "data.yaml", target="x86", prune={"flops": 0.35}, out="out/x86")
    report.final, report.passed, report.stage("openvino-int8")["accuracy"]["map50_95"]

It prints nothing: wrap the call in `edgecompress.progress.reporting(sink)` to follow its progress (a sink has
`emit(event)`; `progress.Lines(sys.stderr)` prints what the command prints on a log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.recipe import Recipe


@dataclass(frozen=True)
class Report:
    """A finished run: `data` is report.json as a dict (its schema is in edgecompress.pipeline.report)."""

    data: dict[str, Any]
    folder: Path

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.data["stages"]

    @property
    def final(self) -> Path:
        """The published artifact: what to deploy."""
        return self.folder / self.data["final"]["artifact"]

    @property
    def network(self) -> Path | None:
        """Beside a final artifact with the frame inside, its network: what Ultralytics' YOLO() loads."""
        name = self.data["final"].get("network")
        return self.folder / name if name else None

    @property
    def passed(self) -> bool:
        """Whether every gate holds."""
        return self.data["passed"]

    def stage(self, name: str) -> dict[str, Any]:
        """One stage's row (accuracy, benchmark, info) by its name, e.g. 'baseline' or 'openvino-int8'."""
        for s in self.stages:
            if s["name"] == name:
                return s
        raise KeyError(f"no stage {name!r} in this run; it has {', '.join(s['name'] for s in self.stages)}")


def compress(model: str | Path | None = None, data: str | Path | None = None, *, recipe: Recipe | str | Path |
             None = None, out: str | Path = "compress-out", trust_checkpoint: bool = False,
             **settings: Any) -> Report:
    """Run the pipeline as `compress` does and return its report. `recipe` is a Recipe or a recipe file; `settings`
    are recipe keys laid over it: top-level values (`target="x86"`, `imgsz=512`) or sections as dicts whose keys
    replace the section's (`prune={"flops": 0.35}`). With neither model nor data, the embedded demo runs."""
    from edgecompress.pipeline.runner import Runner

    base = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe) if recipe else Recipe()
    fields = base.to_dict()
    for key, value in {**settings, **({"model": str(Path(model).resolve())} if model else {}),
                       **({"data": str(Path(data).resolve())} if data else {})}.items():
        fields[key] = {**fields[key], **value} if isinstance(value, dict) and isinstance(fields.get(key), dict) \
            else value
    result = Runner(Recipe.from_dict(fields), Path(out), trust_checkpoint=trust_checkpoint).run()
    return Report(result, Path(out).resolve())
