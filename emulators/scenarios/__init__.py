"""Scenarios: the demo and the shared harness that e2e tests and benchmarks use."""
