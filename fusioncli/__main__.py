"""``python -m fusioncli`` runs the same CLI as the ``fusioncli`` console script."""

from fusioncli.cli import main

if __name__ == "__main__":
    main()
