"""Input pipelines and the bundled offline datasets."""
