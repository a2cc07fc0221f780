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


class PredictionWriter(BasePredictionWriter):
    """After `predict`, one row per image: index, true label, predicted class, softmax confidence."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.summary = ""

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list, batch_indices: list
    ) -> None:
        columns = {key: torch.cat([batch[key] for batch in predictions]).cpu() for key in predictions[0]}
        names = getattr(trainer.datamodule, "class_names", None) or []
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.csv"
        path = Path(trainer.log_dir or ".") / name
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
