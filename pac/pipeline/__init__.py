"""Phase 1 of PAC as library code: pipeline stages, the 1F1B schedule and an in-process executor."""
