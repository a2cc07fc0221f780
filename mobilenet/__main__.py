"""``python -m mobilenet COMMAND ...``: the ``mobilenet`` command (for launchers such as ``torchrun``)."""

from mobilenet.commands import main

main()
