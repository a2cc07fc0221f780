"""The LightningModule: MobileNetV1 trained with cross-entropy, accuracy metrics, optimiser from the config."""

from collections.abc import Sequence
from typing import Literal, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from mobilenet.data.base import BatchedDataModule
from mobilenet.errors import UsageError
from mobilenet.model import MobileNetV1
from mobilenet.record import METADATA_KEY, Metadata, checkpoint_metadata

# Where a checkpoint keeps the training epoch's running loss sum and image count (for a mid-epoch resume).
EPOCH_SUMS_KEY = "epoch_running_sums"
# Top-5 accuracy is reported when there are more classes than CIFAR-10's ten (CIFAR-100 and up).
TOP5_MIN_CLASSES = 11

# Parameter kinds that can be kept out of weight decay (``no_weight_decay``): BatchNorm scales and shifts,
# biases (only the classifier has one), and the depthwise filters, which the paper trains with "very little
# or no weight decay" because they hold so few parameters (Howard et al., 2017, section 3.2).
DecayExemption = Literal["norm", "bias", "depthwise"]


def parameter_groups(net: nn.Module, exempt: Sequence[str]) -> list[dict]:
    """The optimiser's parameter groups: everything decayed except the ``exempt`` kinds (weight decay 0)."""
    skip: dict[int, nn.Parameter] = {}
    for module in net.modules():
        if "norm" in exempt and isinstance(module, nn.modules.batchnorm._BatchNorm):
            skip.update((id(p), p) for p in module.parameters(recurse=False))
        if "bias" in exempt and getattr(module, "bias", None) is not None:
            skip[id(module.bias)] = module.bias
        if "depthwise" in exempt and isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1:
            skip[id(module.weight)] = module.weight
    decayed = [p for p in net.parameters() if id(p) not in skip]
    return [{"params": decayed}, {"params": list(skip.values()), "weight_decay": 0.0}]


def accuracy_metrics(num_classes: int, stage: str) -> MetricCollection:
    """``{stage}/acc`` (top-1) and, for many classes, ``{stage}/acc_top5``; one collection per stage.

    The labels come from our own DataModules, so torchmetrics' per-batch input checks are skipped: they
    read values back from the device (``torch.unique``), which would make the host wait for a GPU every step.
    """
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
    if num_classes >= TOP5_MIN_CLASSES:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
    return MetricCollection(metrics, prefix=f"{stage}/")


class MobileNetClassifier(LightningModule):
    """MobileNetV1 with cross-entropy; logs ``train/*``, ``val/*`` (with ``val/acc_best``) and ``test/*``.

    Args:
        net: The network (``--model.net.width_mult 0.5`` and the like); the CLI links ``num_classes`` from the
            data. Default: ``MobileNetV1()``, the paper's network with the CIFAR stem and 10 classes.
        label_smoothing: Cross-entropy label smoothing; 0 is plain cross-entropy.
        optimizer: Optimiser class and arguments (default Adam, lr 1e-3, the reference recipe).
        lr_scheduler: Optional learning-rate scheduler class and arguments. A scheduler that takes
            ``total_steps`` (one-cycle) gets the run's number of optimiser steps when the config leaves it out.
        lr_scheduler_interval: Step the scheduler every ``epoch`` or every ``step`` (batch).
        no_weight_decay: Parameter kinds the optimiser's weight decay skips: ``norm`` (BatchNorm), ``bias``,
            ``depthwise`` (the 3×3 depthwise filters). Empty: the optimiser's decay applies to all.
        test_time_flip: In ``predict``, classify each image and its mirror image and average the two softmax
            outputs. ``test`` and ``validate`` then report that as ``test/acc_flip`` / ``val/acc_flip`` next to
            the plain ``test/acc`` / ``val/acc``, which stay what checkpoints are chosen by.
        channels_last: Keep weights and activations in channels-last (NHWC) memory order, which the
            convolution libraries of CPUs (oneDNN) and GPUs (cuDNN) run faster; the results are the same.
        compile: ``torch.compile`` the network before the first step (takes a minute or so once per run).

    Checkpoints keep the network's arguments, the data's class names and preprocessing, and the run in one
    record (``mobilenet.deploy.artifacts``), never the optimiser or any other class: loading a checkpoint
    imports nothing it names.
    """

    def __init__(
        self,
        net: Optional[MobileNetV1] = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        no_weight_decay: Sequence[DecayExemption] = (),
        test_time_flip: bool = False,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise UsageError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}.")
        self.net = net if net is not None else MobileNetV1()
        num_classes = self.net.arguments["num_classes"]
        self.test_time_flip = test_time_flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.compile_network = compile
        self.network_compiled = False
        self.net.to(memory_format=self.memory_format)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.no_weight_decay = tuple(no_weight_decay)
        self.make_metrics(num_classes)
        # Saved in checkpoints so that val/acc_best survives a resume, and the epoch's training loss and accuracy
        # so far survive a resume in the middle of an epoch.
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        # The running sums of the training epoch: a plain tensor and an int, not buffers (DDP would overwrite
        # every rank's with rank 0's). A checkpoint saved mid-epoch carries them (on_save_checkpoint);
        # ``resumed`` holds them until training starts again (on_train_start).
        self.epoch_loss_sum = torch.zeros(())
        self.epoch_images = 0
        self.resumed: Optional[dict[str, torch.Tensor]] = None
        # The run this module trains in, recorded in its checkpoints; the CLI fills it in.
        self.run_record: dict = {}
        # The softmax temperature of the model's record (calibration): predict's probabilities are
        # softmax(logits / temperature), as every other command's (mobilenet.deploy.classifier). A trained
        # model is evaluated with its record's; training never uses it.
        self.temperature = 1.0

    def make_metrics(self, num_classes: int) -> None:
        self.train_metrics = accuracy_metrics(num_classes, "train")
        self.train_metrics.persistent(True)
        self.val_metrics = accuracy_metrics(num_classes, "val")
        self.test_metrics = accuracy_metrics(num_classes, "test")
        self.val_flip_metrics = accuracy_metrics(num_classes, "val").clone(postfix="_flip")
        self.test_flip_metrics = accuracy_metrics(num_classes, "test").clone(postfix="_flip")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    def attached_trainer(self) -> Optional[Trainer]:
        """The Trainer running this module, None outside one (``load_from_checkpoint``, a bare forward)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning: "... is not attached to a `Trainer`"
            return None

    def setup(self, stage: str) -> None:
        # An example batch of one image at the data's resolution: the model summary shows each layer's output
        # size and the network's floating-point operations from it.
        trainer = self.attached_trainer()
        resolution = getattr(trainer.datamodule, "resolution", 32) if trainer else 32
        self.example_input_array = torch.zeros(1, 3, resolution, resolution)

    def on_fit_start(self) -> None:
        # What the loggers show as the run's hyper-parameters (hparams.yaml, the W&B config): the network and
        # the loss. They are not saved as Lightning's hyper_parameters: checkpoints keep one record of their own.
        for logger in self.loggers:
            logger.log_hyperparams({**self.net.arguments, "label_smoothing": self.criterion.label_smoothing})

    def configure_model(self) -> None:
        # nn.Module.compile compiles in place: parameter names, and so checkpoints, stay as they are.
        # Lightning may call this hook more than once (fit, then test): compile once.
        if self.compile_network and not self.network_compiled:
            self.net.compile()
            self.network_compiled = True

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        metrics.update(logits, labels)
        return self.criterion(logits, labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.shared_step(batch, self.train_metrics)
        # Per step: one self.log (each costs Lightning measurable Python time, which shows in a short GPU step;
        # docs/performance.md) and no wait for the device. The epoch's loss and accuracy accumulate on the device
        # and are logged once, in on_train_epoch_end. The loggers read train/loss_step every
        # log_every_n_steps steps.
        self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        self.epoch_loss_sum += loss.detach() * len(batch[1])
        self.epoch_images += len(batch[1])  # a Python int: no device work per step
        # Lightning reads every progress-bar value back to the host after every step. A host copy costs
        # nothing on the CPU; on a GPU it would make the host wait each step, so the bar is refreshed every
        # log_every_n_steps steps, when the loggers read the device anyway.
        if self.device.type == "cpu" or batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("loss", loss.detach().cpu(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def on_train_epoch_end(self) -> None:
        """train/loss (the mean over the epoch's images, averaged across ranks) and train/acc."""
        if not self.epoch_images:  # an epoch without training batches (limit_train_batches=0) has neither
            return
        self.log("train/loss", self.epoch_loss_sum / self.epoch_images, sync_dist=True)
        self.log_dict(self.train_metrics)  # Lightning computes (across ranks) and resets them
        self.epoch_loss_sum, self.epoch_images = torch.zeros_like(self.epoch_loss_sum), 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # Two sanity-check batches of an untrained model are no record to keep, and `mobilenet validate`
        # measures one checkpoint: the best-so-far of its training run is not this evaluation's result.
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def evaluation_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        """Loss and accuracy of a validation or test batch, and with ``test_time_flip`` also ``{stage}/acc_flip``."""
        images, labels = batch
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if not self.test_time_flip:
            logits = self(images)
        else:  # one forward pass over the images and their mirror images serves both reports
            logits, mirrored = self(torch.cat([images, images.flip(-1)])).chunk(2)
            flip_metrics = self.val_flip_metrics if stage == "val" else self.test_flip_metrics
            flip_metrics.update((logits.softmax(dim=1) + mirrored.softmax(dim=1)) / 2, labels)
            self.log_dict(flip_metrics, prog_bar=stage == "val")
        metrics.update(logits, labels)
        loss = self.criterion(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(labels), sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        probabilities = (self(images) / self.temperature).softmax(dim=1)
        if self.test_time_flip:
            probabilities = (probabilities + (self(images.flip(-1)) / self.temperature).softmax(dim=1)) / 2
        confidence, prediction = probabilities.max(dim=1)
        return {"prediction": prediction, "confidence": confidence, "label": labels}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The record every consumer reads (``mobilenet.deploy.artifacts``): network, classes, preprocessing, data.

        The training epoch's running loss and accuracy are kept for a resume in the middle of an epoch. A
        checkpoint saved after the epoch's last batch (at validation) stores them empty: that epoch's figures are
        logged, and a resume begins the next epoch.
        """
        checkpoint[METADATA_KEY] = self.metadata().to_dict()
        sums = {"epoch_loss_sum": self.epoch_loss_sum.clone(), "epoch_images": torch.tensor(float(self.epoch_images))}
        # Under DDP each rank has its own sums and only rank 0's would be saved: the resumed epoch's figures then
        # count the batches after the resume only.
        if self.attached_trainer() is not None and (
            self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or self.trainer.world_size > 1
        ):
            sums = {key: torch.zeros_like(value) for key, value in sums.items()}
            for key, value in self.epoch_running_state(checkpoint["state_dict"]).items():
                checkpoint["state_dict"][key] = torch.zeros_like(value)
        checkpoint[EPOCH_SUMS_KEY] = sums

    def metadata(self) -> Metadata:
        trainer = self.attached_trainer()
        data = trainer.datamodule if trainer else None
        num_classes = self.net.arguments["num_classes"]
        names = list(getattr(data, "class_names", None) or []) or [f"class {i}" for i in range(num_classes)]
        metrics = (
            {key: round(float(value), 6) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
            if trainer
            else {}
        )
        run = {
            **self.run_record,
            "epoch": self.current_epoch if trainer else 0,
            "global_step": self.global_step if trainer else 0,
            "metrics": metrics,
        }
        preprocessing = {}
        if isinstance(data, BatchedDataModule):
            preprocessing = {"resolution": data.resolution, "mean": list(data.mean), "std": list(data.std)}
        return Metadata(
            network=dict(self.net.arguments),
            class_names=names,
            data=data.config() if isinstance(data, BatchedDataModule) else None,
            run=run,
            **preprocessing,
        )

    @staticmethod
    def epoch_running_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a (checkpoint's) state_dict that count the current training epoch: train accuracy."""
        return {key: value for key, value in state.items() if key.startswith("train_metrics.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """``MobileNetClassifier.load_from_checkpoint(path)`` builds the network the checkpoint records; weights
        of another shape for a module in training are refused with a sentence, before Lightning's long error."""
        if self.attached_trainer() is None:
            metadata = checkpoint_metadata(checkpoint, "the checkpoint")
            network, self.temperature = metadata.network, metadata.temperature
            if network != self.net.arguments:
                self.net = MobileNetV1(**network).to(memory_format=self.memory_format)
                self.make_metrics(self.net.arguments["num_classes"])
        own = self.state_dict()
        saved_state = checkpoint.setdefault("state_dict", {})
        self.resumed = checkpoint.get(EPOCH_SUMS_KEY)
        for key, value in self.epoch_running_state(own).items():  # which checkpoints of earlier versions lack
            saved_state.setdefault(key, torch.zeros_like(value))
        for key, saved in saved_state.items():
            if key in own and saved.shape != own[key].shape:
                raise UsageError(
                    f"The checkpoint's weights do not fit this network: {key} is {tuple(saved.shape)} in the "
                    f"checkpoint but {tuple(own[key].shape)} here ({self.net.arguments}). It was trained for "
                    f"another number of classes or another width; pick a checkpoint of this run."
                )

    def on_train_start(self) -> None:
        # The sums start at zero, or, resuming in the middle of an epoch, at the checkpoint's. Lightning does not
        # call on_train_epoch_start for an epoch it resumes in the middle, so this is the place; on_train_epoch_end
        # sets them back to zero for the next epoch.
        sums = self.resumed or {"epoch_loss_sum": torch.zeros(()), "epoch_images": torch.zeros(())}
        self.epoch_loss_sum, self.epoch_images = sums["epoch_loss_sum"].to(self.device), int(sums["epoch_images"])
        self.resumed = None

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        exempt = self.no_weight_decay
        optimizer = self.optimizer(parameter_groups(self.net, exempt) if exempt else self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer, **self.schedule_length())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def schedule_length(self) -> dict[str, int]:
        """``total_steps`` for a one-cycle style scheduler whose config leaves its length out.

        The config cannot know the run's length (it follows from epochs, dataset size and batch size), so
        it is filled in here: optimiser steps when the scheduler steps per batch, else epochs.
        """
        given = getattr(self.lr_scheduler, "keywords", {})  # the CLI hands the scheduler over as a partial
        if "total_steps" not in given or given["total_steps"] is not None or given.get("epochs") is not None:
            return {}
        if self.lr_scheduler_interval == "step":
            return {"total_steps": int(self.trainer.estimated_stepping_batches)}
        if not self.trainer.max_epochs or self.trainer.max_epochs < 1:
            raise UsageError(
                "A per-epoch one-cycle schedule needs the number of epochs: set --trainer.max_epochs, or step it "
                "per batch with --model.lr_scheduler_interval step."
            )
        return {"total_steps": self.trainer.max_epochs}
