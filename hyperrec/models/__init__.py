"""Models: the TFRS two-tower and ranker, their numpy forward pass, the exported two-stage
recommender, the candidate index, co-engagement and content signals, and the baselines."""
