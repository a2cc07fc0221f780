"""W&B tracking through the console script, offline: what the run recorded, read back from its files."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, small_run_args
from fake_cifar import CIFAR10_NAMES
from mobilenet.errors import UsageError
from mobilenet.training import tracking
from mobilenet.training.tracking import RUN_ID_KEY, WandbLogger
from wandb_records import item_key, of_type

pytestmark = pytest.mark.slow  # every test here trains with W&B: about a minute

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def fit(data_dir: Path, cwd: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    args = [*small_run_args(data_dir), "--config", str(CONFIGS / "wandb.yaml"), "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    return subprocess.run([MOBILENET, "fit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cifar10_dir) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """A run of one epoch with configs/wandb.yaml and no API key, then resumed for a second epoch."""
    workdir = tmp_path_factory.mktemp("tracked")
    (workdir / "empty-netrc").write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(NETRC=str(workdir / "empty-netrc"), HOME=str(workdir))  # no API key anywhere, no login prompt
    first = fit(cifar10_dir, workdir, env, "--trainer.max_epochs", "1")
    resumed = fit(cifar10_dir, workdir, env, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    return workdir, [first, resumed]


def offline_runs(workdir: Path) -> list[Path]:
    return sorted((workdir / "logs" / "wandb").glob("offline-run-*"))


def history(run: Path) -> list[dict[str, str]]:
    return [{item_key(i): i.value_json for i in h.item} for h in of_type(next(run.glob("run-*.wandb")), "history")]


def test_without_an_api_key_the_run_is_offline_and_says_so_once(tracked):
    workdir, (first, _) = tracked
    assert first.returncode == 0, first.stderr
    runs = offline_runs(workdir)
    assert len(runs) == 2  # the first session and the resumed one
    notices = [line for line in first.stdout.splitlines() if line.startswith("W&B runs offline")]
    assert len(notices) == 1
    assert "no API key" in notices[0] and f"wandb sync logs/wandb/{runs[0].name}" in notices[0]
    assert "Checkpoints are not uploaded as artifacts offline" in notices[0]
    assert (workdir / "logs" / "cifar10" / "version_0" / "metrics.csv").is_file(), "CSV logs are kept as well"


def test_the_offline_run_records_the_config_and_the_metrics(tracked):
    workdir, _ = tracked
    run_file = next(offline_runs(workdir)[0].glob("run-*.wandb"))
    (run,) = of_type(run_file, "run")
    assert run.display_name == "cifar10" and run.project == "mobilenet"
    config = {item_key(i): json.loads(i.value_json) for c in of_type(run_file, "config") for i in c.update}
    assert config["width_mult"] == 0.25 and config["num_classes"] == 10  # the model's hyper-parameters
    assert config["config"]["data"]["init_args"]["val_size"] == 20  # the resolved config, as in config.yaml
    assert config["config"]["model"]["optimizer"]["class_path"] == "torch.optim.Adam"

    logged = history(offline_runs(workdir)[0])
    with open(workdir / "logs" / "cifar10" / "version_0" / "metrics.csv") as file:
        csv_text = file.read()
    for name in ("train/loss", "val/loss", "val/acc", "val/acc_best", "train/lr"):
        values = [row[name] for row in logged if name in row]
        assert len(values) == 1, f"{name} is recorded once for the one epoch"
        assert f"{float(values[0]):.6g}"[:6] in csv_text, f"{name} differs from the CSV log"


def test_each_validation_epoch_logs_a_small_table_of_labelled_images(tracked):
    workdir, _ = tracked
    run = offline_runs(workdir)[0]
    tables = [row for row in history(run) if "val/samples/path" in row]
    assert len(tables) == 1  # one validation epoch, no table for the sanity check
    assert tables[0]["val/samples/nrows"] == "16" and tables[0]["val/samples/ncols"] == "4"
    table = json.loads((run / "files" / json.loads(tables[0]["val/samples/path"])).read_text())
    assert table["columns"] == ["image", "label", "prediction", "confidence"]
    for _, label, prediction, confidence in table["data"]:
        assert label in CIFAR10_NAMES and prediction in CIFAR10_NAMES and 0 <= confidence <= 1
    # The same images as captioned pictures, which an offline run keeps as files.
    (pictures,) = [row for row in history(run) if "val/images/filenames" in row]
    files, captions = json.loads(pictures["val/images/filenames"]), json.loads(pictures["val/images/captions"])
    assert len(files) == 16 and all((run / "files" / name).is_file() for name in files)
    assert [caption.split(" (")[0] for caption in captions] == [f"{row[1]} / {row[2]}" for row in table["data"]]


def test_resuming_continues_the_same_wandb_run(tracked):
    workdir, (_, resumed) = tracked
    assert resumed.returncode == 0, resumed.stderr
    first, second = offline_runs(workdir)
    run_id = first.name.rsplit("-", 1)[1]
    assert second.name.endswith(f"-{run_id}"), "the resumed session must write to the same W&B run id"
    last = torch.load(workdir / "checkpoints" / "cifar10" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last[RUN_ID_KEY] == run_id
    epochs = {row["epoch"] for row in history(second) if "val/acc" in row}
    assert epochs == {"1"}, "the resumed session records epoch 1 into the same run"


def test_an_api_key_means_online_with_checkpoint_artifacts(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    offline = WandbLogger(log_model=True)  # Lightning alone would refuse log_model with offline
    assert offline.offline and offline.kept_checkpoints_local
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "server_unreachable", lambda: "")  # as if the server answered
    online = WandbLogger(log_model=True)
    assert not online.offline and online._log_model is True
    # The CLI passes wandb.init's unset arguments as None; continuing a run by its id needs resume="allow".
    assert WandbLogger(id="abc123", resume=None)._wandb_init["resume"] == "allow"


def test_without_a_network_the_run_goes_offline_at_once_or_stops_if_online_was_asked_for(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    logger = WandbLogger(save_dir=str(tmp_path))
    assert logger.offline and "127.0.0.1:9 cannot be reached" in logger.offline_reason
    with pytest.raises(UsageError, match="set to record online .offline: false., but the server 127.0.0.1:9"):
        WandbLogger(save_dir=str(tmp_path), offline=False)
    assert time.monotonic() - started < 15
