"""``python -m saga``: the operator command line (see :mod:`saga.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
