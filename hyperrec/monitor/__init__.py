"""Monitoring: served traffic as windows, and the trigger that decides to retrain."""
