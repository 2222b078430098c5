"""`python -m transformers_merv.integrations.lmms_eval.tasks` prints the task folder (for `--include_path`)."""

from . import TASKS_DIR


print(TASKS_DIR)
