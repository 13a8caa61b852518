"""Public test helpers: a fake OpenAI-compatible upstream and an in-thread server runner."""

from agentledger.testing.fake_upstream import FakeUpstream, fake_upstream_app
from agentledger.testing.server import ServerThread

__all__ = ["FakeUpstream", "ServerThread", "fake_upstream_app"]
