"""Pruning criteria: how important each channel of a group is (torch-pruning's one-method importances, scored
group-summed and mean-normalised so that groups compare). A new criterion is one class here and its row.

Light at import: torch and torch-pruning load when a criterion is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecompress.config import Registry

if TYPE_CHECKING:
    import torch_pruning as tp
    from ultralytics.nn.tasks import DetectionModel

    from edgecompress.yolo.data import Dataset


class Criterion:
    """A channel importance. Criteria that read data (`needs_data`) see `batches` train batches first, in `feed`."""

    needs_data = False

    def importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def feed(self, model: DetectionModel, importance: tp.importance.Importance, dataset: Dataset, imgsz: int,
             batches: int) -> None:
        """Run the model on data so that `importance` can score it (gradients, activations)."""


CRITERIA: Registry[Criterion] = Registry("pruning criterion")


@CRITERIA.register("l1")
class L1(Criterion):
    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=1)


@CRITERIA.register("l2")
class L2(Criterion):
    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)


@CRITERIA.register("group_norm")
class GroupNorm(L2):
    """L2, after the group-sparsity training of `prune.sparse_epochs` (torch-pruning's GroupNormPruner)."""


@CRITERIA.register("bn_scale")
class BNScale(Criterion):
    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.BNScaleImportance()


@CRITERIA.register("random")
class Random(Criterion):
    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.RandomImportance()


@CRITERIA.register("taylor")
class Taylor(Criterion):
    """First-order Taylor: |weight x gradient| of the detection loss, over a few train batches."""

    needs_data = True

    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()

    def feed(self, model: DetectionModel, importance: tp.importance.Importance, dataset: Dataset, imgsz: int,
             batches: int) -> None:
        loss_model = _with_loss_args(model)
        model.train()
        model.zero_grad()
        for batch in dataset.train_batches(imgsz, batches):
            loss, _ = loss_model.loss(batch)
            loss.sum().backward()
        model.eval()


@CRITERIA.register("activation")
class Activation(Criterion):
    """Mean input activation of each channel's consumers, over a few train batches."""

    needs_data = True

    def importance(self) -> tp.importance.Importance:
        import torch_pruning as tp

        return tp.importance.ActivationImportance()

    def feed(self, model: DetectionModel, importance: tp.importance.Importance, dataset: Dataset, imgsz: int,
             batches: int) -> None:
        import torch

        model.train()
        with importance.compute_importance(model), torch.no_grad():
            sums: dict[torch.nn.Module, torch.Tensor] = {}
            for batch in dataset.train_batches(imgsz, batches):
                model(batch["img"])
                for m in model.modules():
                    if hasattr(m, "_importance"):
                        sums[m] = sums.get(m, 0) + m._importance
            for m, s in sums.items():
                m._importance = s / batches
        model.eval()


def _with_loss_args(model: DetectionModel) -> DetectionModel:
    from ultralytics.cfg import get_cfg

    args = getattr(model, "args", {})  # a model built from a yaml, never trained, has none
    if not hasattr(args, "box"):  # the loss reads its gains as attributes
        model.args = get_cfg(overrides={k: v for k, v in dict(args).items() if k != "cfg"})
    model.criterion = None
    return model
