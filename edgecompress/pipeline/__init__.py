"""The compression pipeline: recipe, stages, runner, report and CLI."""
