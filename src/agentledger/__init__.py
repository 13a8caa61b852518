"""agentledger: an AI gateway that traces agent runs and keeps their books."""

__version__ = "0.1.0"
