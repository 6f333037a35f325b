"""The job file of `pacctl train`: one TOML file says what to fine-tune, on what data, how, and where.

`load_job(path)` reads and validates the whole file before anything starts and returns a frozen `Job`
made of one small frozen section per table ([model], [data], [training], [cache], [devices], [output],
[plan]). A bad job raises `ConfigError` with one line naming the file, the key and what is wrong:

    job.toml: training.batch_size must be an integer >= 1, got "16"

Unknown keys are refused (with the closest valid key), types are strict (a bool is not an integer, a
string is not a number), paths are relative to the job file's directory and files must exist. Every key
is documented in docs/job.md. This module is pure: no torch, grpc or sockets (the model registry, which
imports transformers, is only asked when a model is given by name).
"""

from pac.jobfile.parse import load_job, parse_job
from pac.jobfile.sections import Job

__all__ = ["Job", "load_job", "parse_job"]  # the sections: pac.jobfile.sections
