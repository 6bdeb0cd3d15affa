"""``python -m lipdeploy``: the ``lipdeploy`` command."""

from lipdeploy.cli import main

if __name__ == "__main__":
    main()
