"""`python -m dermctl` (and `torchrun -m dermctl`) run the command-line interface."""

from dermctl.cli.app import main

if __name__ == "__main__":
    main()
