"""Test doubles that speak real protocols over real sockets (no mocks of the client libraries)."""

from .openai_server import FakeOpenAIServer, Recorded, toy_count

__all__ = ["FakeOpenAIServer", "Recorded", "toy_count"]
