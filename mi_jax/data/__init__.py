"""Data: TFDS builders (`builders`), sources (`sources`), grain pipelines (`pipeline`)."""
