"""Experiments: A/B statistics over impressions, team-draft interleaving, and the online trial
that promotes or retires a challenger."""
