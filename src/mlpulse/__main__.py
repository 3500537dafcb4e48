"""Allow `python -m mlpulse`."""

from mlpulse.cli import main

main()
