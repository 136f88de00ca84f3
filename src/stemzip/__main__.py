"""``python -m stemzip`` runs the ``stemzip`` command."""

from stemzip.app import main

if __name__ == "__main__":
    main()
