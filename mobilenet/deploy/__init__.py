"""Everything after training: the one reader of every file this project writes (``artifacts``), one classifier
interface over PyTorch and ONNX Runtime (``classifier``), exports, BatchNorm folding and the tutorial import."""
