"""``python -m featdump`` (also what ``torchrun -m featdump`` runs)."""

from featdump.cli import main

if __name__ == "__main__":
    main()
