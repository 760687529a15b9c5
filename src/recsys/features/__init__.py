"""Feature pipeline: the only code that turns raw ids into model inputs."""
