"""Attack metrics: attack accuracy, KNN feature distance, FID, and the Δ ratio of the paper's tables."""
