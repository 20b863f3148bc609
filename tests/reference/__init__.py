"""References shared by tests, fixture generators and benchmarks (imported as `tests.reference`)."""
