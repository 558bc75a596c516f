"""Tools for tests and benchmarks that must run without the model hub (see ``embedkit.testing.checkpoint``)."""
