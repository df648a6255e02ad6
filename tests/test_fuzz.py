"""Property-based tests: any recipe or dataset YAML either works or fails with the clean error (UserError, exit 2)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecompress.errors import UserError
from edgecompress.cli import main
from edgecompress.yolo.data import Dataset
from edgecompress.recipe import Recipe

SECTIONS = {
    "eval": {"split": st.sampled_from(["val", "test", "train", ""]), "conf": st.floats(-1, 2),
             "iou": st.floats(-1, 2)},
    "bench": {"warmup": st.integers(-2, 3), "runs": st.integers(-1, 3), "max_seconds": st.floats(-1, 5),
              "threads": st.integers(-1, 2)},
    "gates": {"max_map_drop": st.one_of(st.none(), st.floats(-5, 50)),
              "max_latency_ms": st.one_of(st.none(), st.floats(-1, 1e5))},
    "quant": {"mode": st.sampled_from(["none", "ptq", "qat", "int4"])},
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(), max_size=3))


def section(name: str) -> st.SearchStrategy:
    known = st.fixed_dictionaries({}, optional=SECTIONS[name])
    return st.one_of(known, scalars, st.dictionaries(st.text(max_size=8), scalars, max_size=3))


recipes = st.fixed_dictionaries({}, optional={
    "target": st.sampled_from(["onnx", "arm", "x86", "x68", ""]),
    "imgsz": st.one_of(st.sampled_from([64, 100, 0, -32, 640]), scalars),
    "device": st.sampled_from(["cpu", "0", "gpu", ""]),
    **{name: section(name) for name in SECTIONS},
    "unknown": scalars,
})


@settings(max_examples=400, deadline=None)
@given(recipes)
def test_any_recipe_builds_or_names_its_error(data: dict) -> None:
    try:
        recipe = Recipe.from_dict(data)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert Recipe.from_dict(recipe.to_dict()) == recipe


split_values = st.one_of(st.sampled_from(["images/train", "images/val", "images/missing", "labels/val", ""]),
                         st.lists(st.sampled_from(["images/train", "images/val", "nope"]), max_size=2), scalars)
dataset_yamls = st.fixed_dictionaries({}, optional={
    "train": split_values, "val": split_values, "test": split_values,
    "names": st.one_of(st.just({0: "raccoon"}), st.just(["raccoon"]), st.just({0: "a", 1: "b"}),
                       st.dictionaries(st.integers(-1, 3), st.text(max_size=5), max_size=3), scalars),
    "nc": st.one_of(st.integers(-1, 3), scalars),
    "path": st.sampled_from([".", "..", "nowhere"]),
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset_yamls)
def test_any_dataset_yaml_checks_or_names_its_error(demo, spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(demo[1].parent, root)
        (root / "data.yaml").write_text(yaml.safe_dump(spec))
        # Ultralytics resolves a relative `path` against the working directory: here, the copy, not the checkout
        with contextlib.chdir(root):
            try:
                info = Dataset.check(root / "data.yaml", classes=1).info
            except UserError as e:
                assert str(e) and "\n" not in str(e)
            else:
                assert info["nc"] == 1


cli_recipes = st.fixed_dictionaries({"imgsz": st.just(64), "bench": st.just({"warmup": 0, "runs": 1})}, optional={
    "target": st.sampled_from(["onnx", "arm", "x68"]),
    "eval": st.fixed_dictionaries({}, optional={"conf": st.sampled_from([0.001, 0.25, 1.5])}),
    "gates": st.fixed_dictionaries({}, optional={"max_map_drop": st.sampled_from([0.0, 100.0, -1.0]),
                                                 "max_latency_ms": st.sampled_from([1e6, 1e-6])}),
    "bogus": st.just(1),
})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cli_recipes)
def test_any_recipe_file_runs_or_exits_2(tmp_path_factory, data: dict) -> None:
    """Through the CLI: exit 0 or 1 (a gate) for a valid recipe, 2 for an invalid one, never a crash."""
    root = tmp_path_factory.getbasetemp() / "fuzz-cli"
    root.mkdir(exist_ok=True)
    (root / "r.yaml").write_text(yaml.safe_dump(data))
    code = main(["--recipe", str(root / "r.yaml"), "--out", str(root / "out")])  # one output folder: reuse
    try:
        Recipe.from_dict(data)
    except UserError:
        assert code == 2
    else:
        assert code in (0, 1)
        if data.get("gates", {}).get("max_latency_ms") == 1e-6:
            assert code == 1
