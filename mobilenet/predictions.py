"""Writes what `mobilenet predict` predicted to a CSV file next to the run's logs, and says where."""

import csv
import warnings
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

# Rows are numbered in the loader's own order, so Lightning's batch-index bookkeeping is not needed.
warnings.filterwarnings("ignore", ".*Couldn't infer the batch indices.*")

COLUMNS = ("index", "label", "label_name", "prediction", "prediction_name", "confidence")


def gather_on_rank_zero(columns: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """All ranks' rows in dataset order.

    Under DDP rank r predicts images r, r + world_size, ... (the evaluation sampler's shard), so its i-th row
    is image r + i · world_size.
    """
    position = torch.arange(len(columns["label"])) * world_size + rank
    gathered: list = [None] * world_size
    torch.distributed.all_gather_object(gathered, {**columns, "position": position})
    merged = {key: torch.cat([part[key] for part in gathered]) for key in gathered[0]}
    order = merged.pop("position").argsort()
    return {key: value[order] for key, value in merged.items()}


class PredictionWriter(BasePredictionWriter):
    """After `predict`, one row per image: index, true label, predicted class, softmax confidence."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.summary = ""

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list, batch_indices: list
    ) -> None:
        columns = {key: torch.cat([batch[key] for batch in predictions]).cpu() for key in predictions[0]}
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if trainer.world_size > 1:
            columns = gather_on_rank_zero(columns, trainer.global_rank, trainer.world_size)
            if not trainer.is_global_zero:
                return
        names = getattr(trainer.datamodule, "class_names", None) or []
        path = Path(log_dir or ".") / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(COLUMNS)
            rows = zip(*(columns[key].tolist() for key in ("label", "prediction", "confidence")), strict=True)
            for index, (label, prediction, confidence) in enumerate(rows):
                label_name = names[label] if label < len(names) else ""
                prediction_name = names[prediction] if prediction < len(names) else ""
                writer.writerow((index, label, label_name, prediction, prediction_name, f"{confidence:.4f}"))
        accuracy = (columns["label"] == columns["prediction"]).float().mean().item()
        self.summary = f"Wrote {len(columns['label'])} predictions to {path} (accuracy {accuracy:.2%})."

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Printed here, after the progress bar has finished its line.
        if self.summary:
            print(self.summary)
            self.summary = ""
