"""Run the harvester as ``python -m harvester``."""

from harvester.cli import main

if __name__ == "__main__":
    main(prog_name="harvester")
