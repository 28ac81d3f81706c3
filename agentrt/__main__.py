"""``python -m agentrt``: the same as the ``agentrt`` command."""

from agentrt.cli import main

main()
