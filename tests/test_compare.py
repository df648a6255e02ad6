"""`compress report` merging two real runs (x86 and arm, on the demo at a small size) and one real bench file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from edgecompress.cli import main
from edgecompress.pipeline.merge import ACCURACY_PLOT, STAGES_PLOT, rows

# merging reads whatever stages a run made: one quantizer and one calibration method keep the runs short
FAST = "imgsz: 64\nbench: {warmup: 1, runs: 3, max_seconds: 5}\nquant: {quantizer: qdq, method: minmax}\n"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, demo: tuple[Path, Path]) -> list[Path]:
    """Two run folders and a bench folder that timed the arm run's published artifact."""
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "recipe.yaml").write_text(FAST)
    for target in ("x86", "arm"):
        assert main(["--target", target, "--recipe", str(tmp / "recipe.yaml"), "--out", str(tmp / target)]) == 0
    final = tmp / "arm" / json.loads((tmp / "arm" / "report.json").read_text())["final"]["artifact"]
    assert main(["bench", str(final), "--target", "arm", "--data", str(demo[1]), "--runs", "3",
                 "--out", str(tmp / "bench")]) == 0
    return [tmp / "x86", tmp / "arm", tmp / "bench" / "bench.json"]


def test_every_stage_and_the_bench_become_rows(sources: list[Path]) -> None:
    x86, arm, bench = (json.loads((p / "report.json" if p.is_dir() else p).read_text()) for p in sources)
    table = rows(sources)
    assert [(r.source, r.stage) for r in table if r.kind == "run"] == \
        [("x86", s["name"]) for s in x86["stages"]] + [("arm", s["name"]) for s in arm["stages"]]
    (benched,) = [r for r in table if r.kind == "bench"]
    final = arm["stages"][-1]
    # the bench timed the arm run's final artifact: it takes that stage's name and accuracy, and its own latency
    assert (benched.stage, benched.precision, benched.map50_95) == \
        (final["name"], final["precision"], final["accuracy"]["map50_95"])
    assert benched.inference == bench["inference"] and benched.device == bench["device"]
    assert benched.end_to_end_p50_ms == bench["end_to_end"]["p50_ms"]


def test_report_md_and_plots(sources: list[Path], tmp_path: Path, capsys) -> None:
    assert main(["report", *map(str, sources), "--out", str(tmp_path)]) == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    table = rows(sources)
    stage_rows = [li for li in md.splitlines() if " (run) |" in li or " (bench) |" in li]
    assert len(stage_rows) == len(table)
    for r in table:
        assert f"| {r.stage} | {r.source} ({r.kind}) | {r.device} | {r.target} | {r.runtime} |" in md
        assert f"{r.inference['p50_ms']:.1f} / {r.inference['p90_ms']:.1f} / {r.inference['p99_ms']:.1f}" in md
    # the arm run and the bench timed the same file: it gets a row in the same-artifact table
    assert "## The same artifact on different devices or sources" in md
    for plot in (ACCURACY_PLOT, STAGES_PLOT):
        assert f"]({plot})" in md
        image = matplotlib.image.imread(tmp_path / plot)
        assert image.shape[0] >= 400 and image.shape[1] >= 800 and image.std() > 0.05  # drawn, not blank


@pytest.mark.parametrize(("content", "message"), [
    (None, "holds neither report.json nor bench.json"),
    ("{\"schema\": \"other/1\"}", "its schema is 'other/1'"),
    ("not json", "cannot be read as JSON"),
])
def test_sources_that_are_neither_a_run_nor_a_bench(tmp_path: Path, capsys, content: str | None,
                                                    message: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    if content is not None:
        source = source / "bench.json"
        source.write_text(content)
    assert main(["report", str(source), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
