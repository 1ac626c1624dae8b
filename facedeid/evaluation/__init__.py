"""Evaluation harness: privacy (re-identification) and utility (services) of de-identified faces."""
