"""The one training engine shared by every pretraining method."""
