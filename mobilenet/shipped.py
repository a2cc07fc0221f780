"""The trained models shipped with the project (``docs/model_card.md``): where their files are, and that they
are the files that were shipped.

One copy lives in git, in the repository's top-level ``checkpoints/`` folder. Every install carries it:
a clone or an editable install reads it there; a wheel, an sdist or ``pip install git+...`` installs it as
package data, ``mobilenet/checkpoints/`` inside the installed package (``setup.cfg``). Each file's sha256 is
recorded below, and a file that does not match (damaged, truncated, replaced) is refused, never loaded.

``mobilenet.from_pretrained("cifar10")`` is the trained network; to use weights kept elsewhere, pass the file
itself: ``--ckpt_path FILE`` on the command line, ``mobilenet.deploy.artifacts.load(FILE)`` or
``open_classifier(FILE)`` in Python.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mobilenet.deploy.artifacts import load
from mobilenet.errors import UsageError
from mobilenet.model import MobileNetV1

PACKAGE = Path(__file__).resolve().parent
# Where the files are looked for, in order: inside the installed package, then in a clone of the repository.
LOCATIONS = (PACKAGE / "checkpoints", PACKAGE.parent / "checkpoints")


@dataclass(frozen=True)
class Shipped:
    file: str
    sha256: str


MODELS = {
    "cifar10": Shipped(
        "mobilenet_v1_cifar10.safetensors", "7af5a4039700baedf5c2437932d69575a4af905b2aef4aeeebea5275ba6aa43f"
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_path(name: str = "cifar10", verify: bool = True) -> Path:
    """The file of the shipped model ``name``, checked against its recorded sha256 (``verify``)."""
    if name not in MODELS:
        raise UsageError(f"There is no shipped model {name!r}; there is {', '.join(map(repr, MODELS))}.")
    model = MODELS[name]
    candidates = [folder / model.file for folder in LOCATIONS]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise UsageError(
            f"The shipped model {name!r} ({model.file}) is not installed: it was looked for in "
            f"{' and '.join(str(folder) for folder in LOCATIONS)}. Reinstall mobilenet (a wheel, an sdist, "
            f"`pip install git+...` and a clone all carry it), or pass a model file with --ckpt_path."
        )
    if verify and (found := sha256(path)) != model.sha256:
        raise UsageError(
            f"'{path}' is not the shipped model {name!r}: its sha256 is {found}, the shipped file's is "
            f"{model.sha256}. It was damaged or replaced, so it is not loaded. Restore it (`git checkout -- "
            f"checkpoints/{model.file}` in a clone, or reinstall mobilenet), or pass your own file with --ckpt_path."
        )
    return path


def from_pretrained(name: str = "cifar10") -> MobileNetV1:
    """The trained network shipped with the project (``docs/model_card.md``), float32, in eval mode.

    Its record rides along as ``net.metadata``: class names, and the input it expects (``resolution``, ``mean``,
    ``std``; ``mobilenet.deploy.classifier.open_classifier`` applies them to uint8 images).
    """
    artifact = load(shipped_path(name))
    net = artifact.network
    net.metadata = artifact.metadata
    return net
