"""The walk-through notebook runs end to end on generated data, and shows what it says it shows."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from fake_cifar import CIFAR10_NAMES

NOTEBOOK = REPO / "notebooks" / "mobilenet_cifar10.ipynb"


def outputs(cell) -> tuple[str, set[str]]:
    """(the cell's printed text, the MIME types of what it displayed)."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    kinds = {kind for o in cell.outputs if o.output_type in ("display_data", "execute_result") for kind in o.data}
    return text, kinds


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_on_generated_data(cifar10_dir, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = "\n".join([
        f"DATA_DIR = {str(cifar10_dir)!r}", "DOWNLOAD = False", "VERIFY = False", "VAL_SIZE = 20",
        "BATCH_SIZE = 16", "WIDTH_MULT = 0.25", "MAX_EPOCHS = 2", "LIMIT_TRAIN_BATCHES = None",
        f"WORK_DIR = {str(tmp_path / 'run')!r}",
    ])  # fmt: skip
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    cells = {cell.source.splitlines()[0]: cell for cell in notebook.cells if cell.cell_type == "code"}
    summary, _ = outputs(next(c for first, c in cells.items() if first.startswith("data = CIFARDataModule")))
    assert "MobileNetV1" in summary and "Trainable params" in summary and "(2, 10)" in summary
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    _, grid = outputs(next(c for first, c in cells.items() if first.startswith('data.setup("test")')))
    assert "image/png" in grid
    classified, _ = outputs(next(c for first, c in cells.items() if first.startswith("image_file =")))
    lines = classified.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[0] in CIFAR10_NAMES and line.endswith("%") for line in lines)
    _, curves = outputs(next(c for first, c in cells.items() if first.startswith("table = epoch_table")))
    assert "image/png" in curves
