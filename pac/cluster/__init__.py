"""The controller of a distributed fine-tuning job: `pacctl train`."""
