"""The job: the only code that drives Ray. It composes the stages, runs the budget's passes,
schedules and feeds the engines, writes and resumes the output."""
