"""``python -m seganypet.train ...`` (what torchrun launches): the ``seganypet train`` command."""

from seganypet.cli import main

if __name__ == "__main__":
    main(["train"])
