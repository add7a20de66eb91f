"""Tools around the stages: sweeps, launch, serving, predictions, inspection."""

