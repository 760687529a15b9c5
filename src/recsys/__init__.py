"""recsys: a production book recommender."""

__version__ = "0.1.0"
