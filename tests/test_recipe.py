"""Recipe validation: every bad key or value is an error that names it; files and flags compose."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.config import ConfigError
from edgecompress.recipe import Recipe


def test_defaults_round_trip_through_a_dict() -> None:
    recipe = Recipe.from_dict({"target": "x86", "imgsz": 320, "bench": {"runs": 5}, "gates": {"max_map_drop": 1}})
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.gates.max_map_drop == 1.0 and isinstance(recipe.gates.max_map_drop, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tagret": "x86"}, "unknown key 'tagret' (did you mean 'target'?)"),
        ({"bench": {"run": 3}}, "recipe.bench: unknown key 'run' (did you mean 'runs'?)"),
        ({"imgsz": 100}, "imgsz must be a multiple of 32"),
        ({"imgsz": "640"}, "recipe.imgsz: expected int, got str '640'"),
        ({"imgsz": True}, "recipe.imgsz: expected int, got bool"),
        ({"eval": {"split": "vall"}}, "'vall' is not one of 'val', 'test' (did you mean 'val'?)"),
        ({"eval": {"conf": 1.5}}, "eval.conf must be in [0, 1)"),
        ({"bench": {"runs": 0}}, "bench.runs must be >= 1"),
        ({"bench": "fast"}, "recipe.bench: expected a mapping of settings"),
        ({"gates": {"max_map_drop": -1}}, "gates.max_map_drop must be >= 0"),
        ({"prune": {"flops": 1.5}}, "prune.flops"),
        ({"quant": {"mode": "int4"}}, "recipe.quant.mode: 'int4' is not one of"),
        ({"device": "gpu"}, "device must be 'cpu', a CUDA index such as '0', or 'mps' (Apple), got 'gpu'"),
        ({"device": "cuda:0"}, "device must be 'cpu', a CUDA index"),
        ({"model": "best.pt"}, "give both model and data"),
        ([1, 2], "recipe: expected a mapping"),
    ],
)
def test_bad_recipes_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Recipe.from_dict(data)
    assert message in str(error.value)


def test_recipe_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "release.yaml"
    path.write_text("model: ../best.pt\ndata: /abs/data.yaml\ntarget: x86\n")
    recipe = Recipe.load(path)
    assert recipe.model == str(tmp_path / "best.pt")
    assert recipe.data == "/abs/data.yaml"


@pytest.mark.parametrize(("text", "message"), [("target: [x86\n", "not valid YAML"), ("imgsz: 33\n", "imgsz")])
def test_bad_recipe_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Recipe.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")


def test_overrides_replace_nested_settings() -> None:
    recipe = Recipe().with_overrides(**{"target": "arm", "gates.max_latency_ms": 30.0})
    assert (recipe.target, recipe.gates.max_latency_ms, recipe.gates.max_map_drop) == ("arm", 30.0, None)


def test_fine_tuning_runs_after_pruning_or_on_an_unpruned_model_when_asked() -> None:
    from edgecompress.targets import get_target

    def stages(**sections: dict) -> list[str]:
        return [s.name for s in get_target("x86").plan(Recipe.from_dict(sections))]

    assert "finetune" not in stages()
    assert stages(prune={"flops": 0.3})[:3] == ["load", "prune", "finetune"]
    assert stages(finetune={"unpruned": True})[:2] == ["load", "finetune"]
    assert "finetune" not in stages(finetune={"unpruned": True, "epochs": 0})
