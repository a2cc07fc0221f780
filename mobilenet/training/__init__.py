"""Training with Lightning: the LightningModule, its callbacks and checkpoint I/O, run folders, W&B tracking."""
