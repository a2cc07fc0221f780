"""torch.hub entry points: ``torch.hub.load("<owner>/mobilenet", "mobilenet_v1", pretrained=True)``, or from a
clone, ``torch.hub.load("path/to/mobilenet", "mobilenet_v1", source="local", pretrained=True)``."""

dependencies = ["torch", "safetensors"]


def mobilenet_v1(pretrained: bool = False, **kwargs):
    """MobileNetV1 with the CIFAR stem. ``pretrained=True``: the CIFAR-10 model shipped in ``checkpoints/``
    (docs/model_card.md), in eval mode; otherwise a new network built from ``kwargs`` (``width_mult``, ...)."""
    from mobilenet import MobileNetV1, from_pretrained

    if pretrained:
        if kwargs:
            raise ValueError(f"pretrained=True takes no network arguments (the shipped ones are fixed), got {kwargs}.")
        return from_pretrained("cifar10")
    return MobileNetV1(**kwargs)
